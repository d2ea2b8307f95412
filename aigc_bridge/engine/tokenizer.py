"""Prompt tokenisation with the `tokenizers` library alone (no transformers at run time)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import ModelPackageError


class PromptTokenizer:
    """Pads and truncates exactly as the model's own tokenizer config says (pad id, length)."""

    def __init__(self, path: Path, max_length: int, pad_token_id: int) -> None:
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

    def __call__(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        for text, encoding in zip(texts, encodings):
            if encoding.overflowing:
                kept = self._tokenizer.decode(encoding.ids)
                warnings.warn(
                    f"prompt truncated to the text encoder's {self.max_length} tokens; it keeps "
                    f"{len(kept)} of {len(text)} characters: {kept[:60]!r}...", TruncationWarning, stacklevel=3)
        return np.array([e.ids for e in encodings], dtype=np.int64)


class TruncationWarning(UserWarning):
    """A prompt was longer than the text encoder takes; the tail was dropped."""
