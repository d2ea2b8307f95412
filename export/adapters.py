"""LoRAs and textual-inversion embeddings, resolved into the weights before export.

The runtime has no notion of either: a LoRA is fused into the UNet and text encoder weights (diffusers'
``load_lora_weights`` + ``set_adapters`` + ``fuse_lora``, which read the kohya / A1111 and the diffusers /
PEFT formats), an embedding becomes new tokenizer tokens and text-encoder embedding rows
(``load_textual_inversion``). Files are read weights-only (``tensor_files``); every LoRA is checked against
the model first, so a LoRA for another family or keys that match nothing are refused with names, not fused
in part. Each one's name, sha256 and weight / token go into the manifest and every result's provenance.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aigc_bridge.engine.package import sha256_file

from .errors import ExportError
from .tensor_files import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, load_tensors


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    weight: float = 1.0


@dataclass(frozen=True)
class EmbeddingSpec:
    path: Path
    token: str | None = None   # default: the file name without its suffix, as Automatic1111 does


def _split(spec: str) -> tuple[str, str | None]:
    """``FILE[:VALUE]``: the value follows the last colon after a tensor-file suffix (Windows drive letters
    and colons inside folder names stay in the path)."""
    suffixes = "|".join(re.escape(s) for s in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES))
    m = re.fullmatch(rf"(.+?(?:{suffixes})):([^:/\\]*)", spec, flags=re.IGNORECASE)
    return (m[1], m[2]) if m else (spec, None)


def parse_lora(spec: str | LoraSpec) -> LoraSpec:
    if isinstance(spec, LoraSpec):
        return spec
    path, value = _split(spec)
    if value is None:
        return LoraSpec(Path(path))
    try:
        weight = float(value)
    except ValueError:
        raise ExportError(f"--lora {spec}: the weight after ':' must be a number, got {value!r}", "lora") from None
    if not -10.0 <= weight <= 10.0:
        raise ExportError(f"--lora {spec}: weight {weight} is outside -10..10", "lora")
    return LoraSpec(Path(path), weight)


def parse_embedding(spec: str | EmbeddingSpec) -> EmbeddingSpec:
    if isinstance(spec, EmbeddingSpec):
        return spec
    path, token = _split(spec)
    if token is not None and (not token or any(c.isspace() for c in token)):
        raise ExportError(f"--embedding {spec}: the token after ':' must be one word, got {token!r}", "embedding")
    return EmbeddingSpec(Path(path), token)


def lora_components(pipe) -> dict:
    """The modules a LoRA may touch, by the prefix diffusers gives their keys."""
    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    if getattr(pipe, "text_encoder_2", None) is not None:
        parts["text_encoder_2"] = pipe.text_encoder_2
    return parts


def fuse_loras(pipe, specs: Sequence[str | LoraSpec], log: Callable[[str], None] = print) -> list[dict]:
    """Fuse every LoRA at its weight, all at once; returns their provenance records."""
    specs = [parse_lora(s) for s in specs]
    if not specs:
        return []
    names, records = [], []
    for i, spec in enumerate(specs):
        state = load_tensors(spec.path, "lora")
        _check_lora(pipe, state, spec.path.name)
        log(f"loading LoRA {spec.path.name} (weight {spec.weight:g})")
        name = f"lora_{i}"
        try:
            pipe.load_lora_weights(dict(state), adapter_name=name)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ExportError(f"could not load LoRA {spec.path.name}: {exc}", "lora") from None
        names.append(name)
        records.append({"name": spec.path.name, "sha256": sha256_file(spec.path), "weight": spec.weight})
    pipe.set_adapters(names, adapter_weights=[s.weight for s in specs])
    pipe.fuse_lora(components=list(lora_components(pipe)), lora_scale=1.0, adapter_names=names)
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go, so the graphs are plain
    return records


def _check_lora(pipe, state: dict, name: str) -> None:
    """Every LoRA tensor must land on a module of this model with the shape it was trained for."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    try:
        if getattr(pipe, "text_encoder_2", None) is not None:
            converted, _ = pipe.lora_state_dict(dict(state), unet_config=pipe.unet.config)
        else:
            converted, _ = pipe.lora_state_dict(dict(state))
    except (ValueError, KeyError) as exc:
        raise ExportError(f"{name} is not a LoRA diffusers can read (kohya / A1111 or diffusers / PEFT "
                          f"format): {exc}", "lora") from None
    parts = lora_components(pipe)
    unmatched = sorted(k for k in converted if k.split(".")[0] not in parts)
    misfits: list[str] = []
    if unmatched and any(k.startswith("text_encoder_2.") for k in unmatched):
        raise ExportError(f"{name} is an SDXL LoRA (it has weights for a second text encoder); this model has "
                          "one text encoder (SD 1.x / 2.x)", "lora")
    for prefix, module in parts.items():
        part = {k[len(prefix) + 1:]: v for k, v in converted.items() if k.startswith(prefix + ".")}
        if not part:
            continue
        try:
            if prefix == "unet":
                peft = convert_unet_state_dict_to_peft(part)
            else:
                peft = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        except ValueError as exc:
            raise ExportError(f"{name}: diffusers cannot read its {prefix} weights ({exc})", "lora") from None
        if prefix != "unet" and not hasattr(module, "text_model"):  # transformers >= 5.6 flattened CLIP
            peft = {k.removeprefix("text_model."): v for k, v in peft.items()}
        for key, tensor in sorted(peft.items()):
            m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key)
            if m is None:
                continue
            try:
                target = module.get_submodule(m[1])
            except AttributeError:
                unmatched.append(f"{prefix}.{m[1]}")
                continue
            fan_in = getattr(target, "in_features", getattr(target, "in_channels", None))
            fan_out = getattr(target, "out_features", getattr(target, "out_channels", None))
            have, want = (tensor.shape[1], fan_in) if m[2] == "A" else (tensor.shape[0], fan_out)
            if have != want:
                misfits.append(f"{prefix}.{m[1]} ({'input' if m[2] == 'A' else 'output'} {have}, the model's {want})")
    if misfits:
        cross = [f for f in misfits if re.search(r"attn2\.to_[kv] \(input", f)]
        family = (" — its cross-attention reads text features of another width: a LoRA for another family "
                  "(SD 1.x reads 768, SD 2.x 1024, SDXL 2048)") if cross else " — a LoRA for another model family"
        raise ExportError(f"{name} does not fit this model: {len(misfits)} of its layers have other shapes, e.g. "
                          f"{'; '.join((cross or misfits)[:3])}{family}", "lora")
    if unmatched:
        unmatched = sorted(set(unmatched))
        raise ExportError(f"{name}: {len(unmatched)} of its layers match nothing in this model, e.g. "
                          f"{', '.join(unmatched[:4])}", "lora")


def add_embeddings(pipe, specs: Sequence[str | EmbeddingSpec], log: Callable[[str], None] = print) -> list[dict]:
    """Add each textual-inversion embedding's token(s); returns their provenance records."""
    records = []
    for spec in (parse_embedding(s) for s in specs):
        state = load_tensors(spec.path, "embedding")
        token = spec.token or spec.path.stem
        targets = _embedding_targets(pipe, state, spec.path.name)
        vectors = []
        for tensor_or_state, tokenizer, encoder in targets:
            before = len(tokenizer)
            try:
                pipe.load_textual_inversion(tensor_or_state, token=token, tokenizer=tokenizer, text_encoder=encoder)
            except ValueError as exc:
                hint = " (pass --embedding FILE:OTHER_TOKEN)" if "already in tokenizer" in str(exc) else ""
                raise ExportError(f"embedding {spec.path.name} (token {token!r}): {str(exc).splitlines()[0][:300]}"
                                  f"{hint}", "embedding") from None
            vectors.append(len(tokenizer) - before)
        log(f"added embedding {spec.path.name} as {token!r} ({'/'.join(map(str, vectors))} vectors)")
        records.append({"name": spec.path.name, "sha256": sha256_file(spec.path), "token": token,
                        "vectors": vectors})
    return records


def _embedding_targets(pipe, state: dict, name: str) -> list[tuple]:
    """(what to load, tokenizer, text encoder) per encoder: SDXL embeddings carry one tensor per encoder."""
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    if "clip_l" in state or "clip_g" in state:
        if not sdxl or "clip_l" not in state or "clip_g" not in state:
            raise ExportError(f"embedding {name} is for SDXL (clip_l / clip_g vectors) and needs both; this model "
                              f"is {'SDXL' if sdxl else 'SD 1.x / 2.x'}", "embedding")
        return [(state["clip_l"], pipe.tokenizer, pipe.text_encoder),
                (state["clip_g"], pipe.tokenizer_2, pipe.text_encoder_2)]
    if sdxl:
        raise ExportError(f"embedding {name} has one set of vectors (an SD 1.x / 2.x embedding); SDXL needs "
                          "clip_l and clip_g", "embedding")
    if "emb_params" in state:  # Automatic1111's .safetensors layout
        return [(state["emb_params"], pipe.tokenizer, pipe.text_encoder)]
    return [(state, pipe.tokenizer, pipe.text_encoder)]


def token_expansions(tokenizer) -> dict[str, str]:
    """Multi-vector tokens as diffusers' ``maybe_convert_prompt`` expands them: ``tok`` -> ``tok tok_1 tok_2``
    (the runtime applies the same replacement before tokenising)."""
    added = set(tokenizer.added_tokens_encoder)
    out = {}
    for token in sorted(added):
        if f"{token}_1" not in added:
            continue
        replacement, i = token, 1
        while f"{token}_{i}" in added:
            replacement += f" {token}_{i}"
            i += 1
        out[token] = replacement
    return out
