"""Prompt tokenisation with the `tokenizers` library alone (no transformers at run time)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelPackageError


@dataclass(frozen=True)
class Tokens:
    ids: np.ndarray     # (1, max_length) int64
    dropped: str        # the end of the text that did not fit, as the user wrote it ("" when it all fits)


class PromptTokenizer:
    """Pads and truncates exactly as the model's own tokenizer config says (pad id, length)."""

    def __init__(self, path: Path, max_length: int, pad_token_id: int,
                 token_expansions: dict[str, str] | None = None) -> None:
        """``token_expansions`` maps a multi-vector embedding's token to its vector tokens, as the package's
        manifest lists them."""
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise ModelPackageError(f"{path} is not a valid tokenizer.json: {exc}", path.name) from None
        pad_token = self._tokenizer.id_to_token(pad_token_id)
        if pad_token is None:
            raise ModelPackageError(f"pad_token_id {pad_token_id} is not in {path}", "pad_token_id")
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding(length=max_length, pad_id=pad_token_id, pad_token=pad_token)
        self.max_length = max_length
        self._expansions = dict(token_expansions or {})
        # the prompt's whole tokenisation (no truncation, no padding) decides what is expanded, as in diffusers
        self._scanner = Tokenizer.from_file(str(path)) if self._expansions else None

    def __call__(self, text: str) -> Tokens:
        text = self._expand(text)
        encoding = self._tokenizer.encode(text)
        dropped = ""
        if encoding.overflowing:
            # Offsets map tokens back to the user's characters (through lower-casing and whitespace clean-up),
            # so the dropped part is quoted as typed, not as tokenizer pieces.
            kept_end = max((end for (start, end), special in zip(encoding.offsets, encoding.special_tokens_mask)
                            if not special and end > start), default=0)
            while 0 < kept_end < len(text) and not text[kept_end].isspace() and not text[kept_end - 1].isspace():
                kept_end -= 1  # a word cut inside is quoted whole: it did not reach the model as written
            dropped = text[kept_end:].strip()
        return Tokens(np.array([encoding.ids], dtype=np.int64), dropped)

    def _expand(self, text: str) -> str:
        """diffusers' ``maybe_convert_prompt``: each multi-vector token the prompt tokenises to is replaced,
        as text, by all its vector tokens."""
        if not self._expansions:
            return text
        for token in set(self._scanner.encode(text, add_special_tokens=False).tokens):
            if token in self._expansions:
                text = text.replace(token, self._expansions[token])
        return text


def truncation_message(what: str, max_length: int, dropped: str) -> str:
    """One sentence for a user: which text was cut, and the words that were lost."""
    words = len(dropped.split())
    quoted = dropped if len(dropped) <= 120 else dropped[:117].rstrip() + "..."
    return (f"{what} truncated to the text encoder's {max_length} tokens: its last {words} "
            f"word{'s' * (words != 1)} did not fit: \"{quoted}\"")

