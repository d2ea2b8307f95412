"""The manifest (``--out/batch-manifest.json``): every output set the batch made, what made it, and which jobs
are done, failed or still to do. Rewritten atomically after every output set, so it is always a valid
record of what is on disk; a rerun trusts it to skip finished work.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..assets.writers import write_atomic
from ..errors import AigcError
from .plan import Unit, job_key
from .render import Rendered
from .spec import Job

MANIFEST_NAME = "batch-manifest.json"
SCHEMA = "aigc-bridge/batch-manifest@1"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Manifest:
    """The manifest of one --out folder; ``save`` writes it."""

    def __init__(self, out: Path, data: dict | None = None) -> None:
        self.out = out
        self.path = out / MANIFEST_NAME
        self.data = data or {"schema": SCHEMA, "job_file": None, "model": None, "runs": [], "jobs": {},
                             "outputs": {}, "blend": None, "summary": {}}
        self._failed: dict[str, dict] = {}   # job name -> error of this run
        self._order: list[str] = []
        self._units: dict[str, list[Unit]] = {}
        self._jobs: list[Job] = []
        self._done: set[str] = set()

    @classmethod
    def load(cls, out: Path) -> Manifest:
        path = out / MANIFEST_NAME
        if not path.exists():
            return cls(out)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AigcError("manifest", f"cannot read {path}: {exc}; move it away to start over (finished "
                            "outputs are then made again)", "out") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise AigcError("manifest", f"{path} is not an aigc-bridge batch manifest ({SCHEMA}); use another "
                            "--out folder", "out")
        return cls(out, data)

    @property
    def run(self) -> int:
        return len(self.data["runs"])

    def begin(self, job_file: Path | None, model: dict, mode: str, jobs: list[Job], units: list[Unit]) -> int:
        """Start a run: record what it runs, and lay out the jobs table in job-file order."""
        self.data["job_file"] = str(job_file.resolve()) if job_file is not None else None
        self.data["model"] = model
        self.data["runs"].append({"run": self.run + 1, "mode": mode, "started": _now(), "finished": None,
                                  "generated": 0, "skipped": 0, "failed": 0, "interrupted": False})
        by_job: dict[str, list[Unit]] = {}
        for unit in units:
            by_job.setdefault(unit.job, []).append(unit)
        self._units = by_job
        self._jobs = jobs
        self._order = [u.stem for u in units]
        self._done = {u.key for u in units if self._on_disk(u)}
        return self.run

    def done(self, unit: Unit) -> bool:
        """Made (by this run or an earlier one) with the same key, its files there when the run began."""
        return unit.key in self._done

    def _on_disk(self, unit: Unit) -> bool:
        """Recorded with the same key, and every file still there with its size."""
        entry = self.data["outputs"].get(unit.stem)
        if not entry or entry.get("key") != unit.key:
            return False
        return all((self.out / f["file"]).is_file() and (self.out / f["file"]).stat().st_size == f["bytes"]
                   for f in entry["files"])

    def count(self, what: str, n: int = 1) -> None:
        self.data["runs"][-1][what] += n

    def record(self, rendered: Rendered) -> None:
        unit = rendered.unit
        request = unit.request
        self.data["outputs"][unit.stem] = {
            "job": unit.job, "image": unit.image + 1, "kind": request.kind, "key": unit.key,
            "prompt": request.prompt, "seed": request.seed, "run": self.run, "generated_at": _now(),
            "seconds": round(rendered.seconds, 3), **{k: v for k, v in rendered.info.items() if v},
            "files": [{"file": f.filename, "role": f.role, "mime": f.mime, "colour_space": f.colour_space,
                       "width": f.width, "height": f.height, "bit_depth": f.bit_depth, "bytes": len(f.data),
                       "sha256": hashlib.sha256(f.data).hexdigest()} for f in rendered.files]}
        self._done.add(unit.key)
        self.count("generated")

    def stale_files(self, unit: Unit, files: list) -> list[Path]:
        """Files of the set recorded for this stem before that the new set does not have (a job that had
        PBR maps and now has none): removed so --out holds only what the manifest lists."""
        keep = {f.filename for f in files}
        return [self.out / name for name in (f["file"] for f in self.data["outputs"].get(unit.stem, {})
                                             .get("files", [])) if name not in keep]

    def fail(self, unit: Unit, error: AigcError) -> None:
        self._failed.setdefault(unit.job, {"code": error.code, "message": error.message, "field": error.field,
                                           "image": unit.image + 1})
        self.count("failed")

    def set_blend(self, info: dict | None) -> None:
        self.data["blend"] = info

    def job_status(self, name: str) -> str:
        units = self._units.get(name, [])
        if name in self._failed:
            return "failed"
        return "done" if units and all(self.done(u) for u in units) else "pending"

    def failures(self) -> dict[str, dict]:
        return dict(self._failed)

    def finish(self, interrupted: bool) -> None:
        run = self.data["runs"][-1]
        run["finished"], run["interrupted"] = _now(), interrupted

    def save(self) -> None:
        """Jobs and summary from the current state, outputs in job-file order, then an atomic write."""
        jobs = {}
        for job in self._jobs:
            units = self._units.get(job.name, [])
            status = self.job_status(job.name)
            jobs[job.name] = {"index": job.index, "kind": job.kind, "entry": job.source, "key": job_key(units),
                              "status": status, "outputs": [u.stem for u in units],
                              "targets": job.targets.to_dict(), "error": self._failed.get(job.name)}
        outputs = self.data["outputs"]
        order = {stem: i for i, stem in enumerate(self._order)}
        self.data["outputs"] = dict(sorted(outputs.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
        self.data["jobs"] = jobs
        statuses = [j["status"] for j in jobs.values()]
        self.data["summary"] = {"jobs": len(jobs), **{s: statuses.count(s) for s in ("done", "failed", "pending")},
                                "outputs": sum(1 for units in self._units.values() for u in units if self.done(u)),
                                "files": sum(len(e["files"]) for e in self.data["outputs"].values()),
                                "updated": _now()}
        text = json.dumps(self.data, indent=2, ensure_ascii=False) + "\n"
        write_atomic(self.path, text.encode("utf-8"))

    def output_files(self, stem: str) -> dict[str, Path]:
        """role -> path of a recorded output set."""
        entry = self.data["outputs"].get(stem) or {}
        return {f["role"]: self.out / f["file"] for f in entry.get("files", [])}
