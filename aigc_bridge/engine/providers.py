"""Execution providers: pick the fastest available one, or the one the user asked for."""

from __future__ import annotations

from ..errors import InvalidRequest

# Short names users type, mapped to onnxruntime's provider names, fastest first.
PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def choose_providers(requested: str | None = None) -> list[str]:
    """``None`` or "auto": the fastest available provider, with CPU as the fallback for unsupported ops."""
    import onnxruntime as ort

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
