"""Jobs -> units of work (one image and its output set each), with the content keys that make runs resumable.

A unit's key hashes everything that decides its files: the request (prompt, seed, size, steps, PBR..., and the
sha256 of each input image, so new bytes under the same file name run again), the file stem and the model
package's hash. Same key, same files: a rerun skips it. Change the prompt, the
seed or the model and the key changes, so it is made again.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import AigcError
from ..input_image import InputImage
from ..request import IMAGE_FIELDS, GenerateRequest
from .spec import Job

KEY_VERSION = 1  # bump when the same key could mean different files


@dataclass(frozen=True)
class Unit:
    """One image of one job: generated, turned into an output set named ``stem``, written as one."""

    job: str
    job_index: int
    image: int               # 0-based position within its job
    stem: str
    request: GenerateRequest  # count 1, seed set
    exr: bool
    key: str
    error: AigcError | None = None  # an input image of its job could not be read: it fails without running

    def to_dict(self, images: bool = False) -> dict:
        """JSON-ready; input images by record, and with ``images`` their bytes too (base64: a Ray row is text)."""
        out = {"job": self.job, "job_index": self.job_index, "image": self.image, "stem": self.stem,
               "request": self.request.to_dict(), "exr": self.exr, "key": self.key}
        if images:
            out["images"] = {name: base64.b64encode(image.data).decode("ascii")
                             for name, image in self.request.images().items() if image.data is not None}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Unit:
        request = data["request"]
        images = {name: InputImage.from_bytes(base64.b64decode(text), name)
                  for name, text in (data.get("images") or {}).items()}
        records = [(name, request.get(name)) for name in IMAGE_FIELDS]
        records += [(f"controls[{i}].image", c.get("image")) for i, c in enumerate(request.get("controls") or [])]
        for name, record in records:
            if record is not None and name not in images:
                images[name] = InputImage.from_record(record, name)
        built, _ = GenerateRequest.from_dict(request, images)
        return cls(data["job"], data["job_index"], data["image"], data["stem"], built, data["exr"], data["key"])

    def provenance(self) -> dict:
        """What the provenance JSON says about the batch that made this file."""
        return {"job": self.job, "image": self.image + 1, "key": self.key}


def unit_key(request: GenerateRequest, stem: str, exr: bool, model_hash: str) -> str:
    payload = {"v": KEY_VERSION, "model": model_hash, "stem": stem, "exr": exr, "request": request.to_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def units_of(jobs: Iterable[Job], model_hash: str) -> list[Unit]:
    """Every unit of every job, in job-file order."""
    return [Unit(job.name, job.index, i, stem, request, job.exr, unit_key(request, stem, job.exr, model_hash),
                 job.input_error)
            for job in jobs for i, (stem, request) in enumerate(zip(job.stems, job.requests))]


def job_key(units: Iterable[Unit]) -> str:
    """A job's key: the keys of its units (so a job is done when every one of them is)."""
    return hashlib.sha256("".join(u.key for u in units).encode()).hexdigest()


def groups(units: Iterable[Unit], batch_size: int) -> list[list[Unit]]:
    """Runs of at most ``batch_size`` units that one engine call can make: the same request but for
    consecutive seeds (the engine's image i of count n is seed + i alone, so results do not change)."""
    out: list[list[Unit]] = []
    for unit in units:
        last = out[-1] if out else None
        if (last is not None and len(last) < batch_size and last[-1].job_index == unit.job_index
                and unit.request.seed == last[-1].request.seed + 1
                and dataclasses.replace(unit.request, seed=last[-1].request.seed) == last[-1].request):
            last.append(unit)
        else:
            out.append([unit])
    return out


def group_request(group: list[Unit]) -> GenerateRequest:
    """The one engine request that makes every unit of ``group``."""
    return dataclasses.replace(group[0].request, count=len(group))
