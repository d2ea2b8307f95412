"""Provenance: the small JSON written next to every output set, so a file can be traced and reproduced.

It carries the engine's ``GenerationResult.metadata(i)`` (prompt, seed, model hash...), how the outputs
were made (kind, sizes, conventions, post-processing) and the list of files with their colour spaces.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .. import __version__

SCHEMA = "aigc-bridge/outputs@1"
# Always present (null when the caller did not know them), in this order.
GENERATION_KEYS = ("prompt", "negative_prompt", "seed", "steps", "scheduler", "guidance", "width", "height",
                   "tile", "model_id", "model_hash", "provider", "timings_ms", "tool_version")


def provenance(metadata: dict, outputs: dict, files: list[dict]) -> dict:
    """The provenance document: generation keys first, then any other metadata, ``outputs`` and ``files``."""
    doc: dict[str, Any] = {"schema": SCHEMA}
    for key in GENERATION_KEYS:
        doc[key] = _plain(metadata.get(key))
    for key, value in metadata.items():
        if key not in doc:
            doc[str(key)] = _plain(value)
    doc["assets_version"] = __version__
    doc["outputs"] = _plain(outputs)
    doc["files"] = _plain(files)
    return doc


def provenance_bytes(metadata: dict, outputs: dict, files: list[dict]) -> bytes:
    return (json.dumps(provenance(metadata, outputs, files), indent=2, ensure_ascii=False,
                       allow_nan=False) + "\n").encode("utf-8")


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python numbers, tuples to lists, non-finite floats to null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
