"""Execution providers: pick the fastest available one, or the one the user asked for."""

from __future__ import annotations

import warnings
from importlib import metadata

from ..errors import AigcError, InvalidRequest

_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml")

# Short names users type, mapped to onnxruntime's provider names, fastest first.
PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def import_onnxruntime():
    """onnxruntime, or a clear error saying which build to install; warns when two builds fight over it."""
    installed = [name for name in _ORT_DISTRIBUTIONS if _installed(name)]
    if len(installed) > 1:
        warnings.warn(f"{' and '.join(installed)} are installed side by side and overwrite each other's "
                      "files; keep one (see README, 'GPU')", RuntimeWarning, stacklevel=2)
    try:
        import onnxruntime
    except ImportError:
        raise AigcError("missing_dependency", "onnxruntime is not installed: pip install 'aigc-bridge[cpu]' "
                        "(or [gpu] for NVIDIA CUDA, [directml] for Windows GPUs)", "onnxruntime") from None
    return onnxruntime


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def choose_providers(requested: str | None = None) -> list[str]:
    """``None`` or "auto": the fastest available provider, with CPU as the fallback for unsupported ops."""
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if requested in (None, "auto"):
        chosen = [name for name in PROVIDERS.values() if name in available]
        return chosen[:1] + (["CPUExecutionProvider"] if chosen[:1] != ["CPUExecutionProvider"] else [])
    if requested not in PROVIDERS:
        raise InvalidRequest(f"provider must be one of auto, {', '.join(PROVIDERS)}; got {requested!r}",
                             "provider")
    name = PROVIDERS[requested]
    if name not in available:
        hint = " (install the GPU build: see README, 'GPU')" if requested == "cuda" else ""
        raise InvalidRequest(f"provider {requested} is not available in this onnxruntime; available: "
                             f"{', '.join(available)}{hint}", "provider")
    return [name] + (["CPUExecutionProvider"] if name != "CPUExecutionProvider" else [])


def open_session(path, options, providers: list[str], name: str):
    """An onnxruntime session for one graph of a package; a graph that does not load is named in the error."""
    ort = import_onnxruntime()
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
        raise AigcError("model_package", f"cannot load {name}: {exc}", name) from None
