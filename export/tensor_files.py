"""Reading tensor files from strangers: checkpoints, LoRAs and embeddings from model sites.

``.safetensors`` holds tensors and nothing else. ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` are pickles, which
can run any code when loaded, so they are opened with torch's weights-only unpickler: tensors, containers
and numbers load, anything else is refused with what it asked for, and nothing in the file runs. Old
Lightning checkpoints (SD 1.x) pickle two harmless things beside the weights — the ModelCheckpoint callback
class as a dict key and numpy scalars for the step — which load as inert stand-ins.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from .errors import ExportError

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class _TrainingMetadata:
    """Stands in for a training-time class pickled next to the weights; it holds data and does nothing."""

    def __setstate__(self, state) -> None:
        self.state = state


def _stand_ins() -> list:
    import numpy as np

    scalar = np.core.multiarray.scalar if hasattr(np, "core") else np._core.multiarray.scalar
    dtypes = [type(np.dtype(name)) for name in ("f2", "f4", "f8", "i4", "i8", "u1", "?")]
    return [
        (_TrainingMetadata, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        (_TrainingMetadata, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
        (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
        (np.dtype, "numpy.dtype"), *dtypes,
    ]


def check_suffix(path: Path, field: str) -> None:
    if not path.is_file():
        raise ExportError(f"{path} does not exist (or is not a file)", field)
    if path.suffix.lower() not in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES):
        raise ExportError(f"{path.name}: expected a .safetensors or .ckpt / .pt file, got {path.suffix!r}",
                              field)


def load_tensors(path: str | Path, field: str, mmap: bool = False) -> dict:
    """All tensors of ``path`` (a nested ``state_dict`` unwrapped), read without running any code in it."""
    path = Path(path)
    check_suffix(path, field)
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ExportError(f"{path.name} is not a readable .safetensors file: {exc}", field) from None
    with torch.serialization.safe_globals(_stand_ins()):
        try:
            data = _weights_only_load(path, mmap)
        except pickle.UnpicklingError as exc:
            raise ExportError(_refusal(path, exc), field) from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise ExportError(f"{path.name} is not a readable PyTorch file: {exc}", field) from None
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ExportError(f"{path.name} holds a {type(data).__name__}, not a dict of tensors", field)
    return data


def tensor_shapes(path: str | Path, field: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes only: a .safetensors header is read without touching the data."""
    path = Path(path)
    check_suffix(path, field)
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ExportError(f"{path.name} is not a readable .safetensors file: {exc}", field) from None
    return {k: tuple(v.shape) for k, v in load_tensors(path, field, mmap=True).items()
            if isinstance(v, torch.Tensor)}


def safe_load_context():
    """The allowlist :func:`load_tensors` uses, for code that hands the same file to diffusers' own
    (weights-only) loader."""
    return torch.serialization.safe_globals(_stand_ins())


def _weights_only_load(path: Path, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):  # a pre-1.6 (non-zip) file: no memory mapping, same checks
            return torch.load(path, map_location="cpu", weights_only=True)
        raise


def _refusal(path: Path, exc: Exception) -> str:
    try:
        asked = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip archive: fall back to what the unpickler said
        asked = []
    allowed = {name for entry in _stand_ins() if isinstance(entry, tuple) for name in entry[1:]}
    asked = [name for name in asked if name not in allowed]
    if not asked:
        found = re.search(r"(Unsupported global: GLOBAL \S+|Unsupported operand \d+|[^.\n]*unrecognized[^.\n]*)",
                          str(exc))
        asked = [found.group(1) if found else str(exc).splitlines()[-1][:200]]
    return (f"{path.name} was refused: it is a pickle that would run code when loaded (it asks for "
            f"{', '.join(asked[:5])}); nothing in it was run. .ckpt / .pt files load weights-only (tensors "
            "and plain data); use the .safetensors release of this model")
