"""Units -> output sets in memory: the engine, then the asset writers' ``build_outputs``.

The same function runs in this process (``--model``) and inside each Ray actor, so both make byte-identical
files for the same units; only the driver writes them to disk. ``pack``/``unpack`` carry a result across
Ray as one JSON header and one bytes blob (no pickling of our classes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..assets.outputs import BuiltOutput, build_outputs
from ..upscale import own_upscaler
from .plan import Unit, group_request


@dataclass
class Rendered:
    """One unit's output set, ready to be written."""

    unit: Unit
    files: list[BuiltOutput]
    seconds: float
    info: dict = field(default_factory=dict)  # model id/hash, provider, warnings


def render_group(pipeline, group: list[Unit], callback: Callable | None = None) -> list[Rendered]:
    """Make every unit of ``group`` with one engine call (see plan.groups) and build its files.
    ``callback`` is the engine's progress callback (return False to cancel)."""
    start = time.perf_counter()
    result = pipeline.generate(group_request(group), callback=callback)
    per_image = (time.perf_counter() - start) / len(group)
    rendered = []
    for i, unit in enumerate(group):
        t0 = time.perf_counter()
        request = result.request
        metadata = {**result.metadata(i), "batch": unit.provenance()}
        files = build_outputs(result.images[i], metadata, unit.stem, kind=request.kind, pbr=request.pbr,
                              target_size=request.target_size, normal_convention=request.normal_convention,
                              bit_depth=request.bit_depth, exr=unit.exr,
                              upscaler=own_upscaler(pipeline, request))
        info = {"model_id": result.model_id, "model_hash": result.package_hash, "provider": result.provider,
                "steps": request.steps, "warnings": list(result.warnings)}
        rendered.append(Rendered(unit, files, per_image + time.perf_counter() - t0, info))
    return rendered


def pack(rendered: Rendered) -> tuple[str, bytes]:
    """A JSON header (unit, file descriptions, timing) and the files' bytes, one after the other."""
    header = {"unit": rendered.unit.to_dict(), "seconds": rendered.seconds, "info": rendered.info,
              "files": [{k: v for k, v in asdict(f).items() if k != "data"} | {"size": len(f.data)}
                        for f in rendered.files]}
    return json.dumps(header), b"".join(f.data for f in rendered.files)


def unpack(header: str, blob: bytes) -> Rendered:
    doc = json.loads(header)
    files, offset = [], 0
    for entry in doc["files"]:
        size = entry.pop("size")
        files.append(BuiltOutput(data=bytes(blob[offset:offset + size]), **entry))
        offset += size
    if offset != len(blob):
        raise ValueError(f"a packed result has {len(blob)} bytes, its header lists {offset}")
    return Rendered(Unit.from_dict(doc["unit"]), files, doc["seconds"], doc["info"])
