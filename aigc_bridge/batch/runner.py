"""The driver: skip what is done, make the rest through a backend, write each output set as one transaction,
record it in the manifest, keep going past failures, stop cleanly on Ctrl-C, then the optional Blender step.

The same loop serves every backend (local, sidecar, Ray), so outputs and manifest do not depend on where
the images were made.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AigcError
from ..progress import ProgressBar
from .backends import BackendLost, Failure, Interrupted
from .manifest import MANIFEST_NAME, Manifest
from .outdir import OutLock, remove_temporaries, write_set
from .plan import Unit, groups, units_of
from .spec import JobFile, JobFileError


@dataclass
class BatchOptions:
    out: Path
    batch_size: int = 1                  # images per engine call (same job, consecutive seeds)
    blend: Path | None = None            # apply the results to a copy of this .blend
    export_glb: Path | None = None       # ... and export the scene as this GLB
    blender: str | None = None           # a Blender executable; None: the bpy module in this Python


@dataclass
class BatchSummary:
    jobs: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    generated: int = 0
    skipped: int = 0
    interrupted: bool = False
    lost: str | None = None              # why the backend could make nothing more
    failures: dict[str, dict] = field(default_factory=dict)
    blend: dict | None = None
    manifest: Path | None = None
    projects: list[dict] = field(default_factory=list)  # one report per [[project]] job

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        blend_failed = self.blend is not None and (self.blend.get("error") or self.blend.get("problems"))
        projects_failed = any(p.get("error") for p in self.projects)
        return 1 if self.failed or self.pending or self.lost or blend_failed or projects_failed else 0


class _StopFlag:
    """Ctrl-C (or SIGTERM) asks the run to stop after the current step; a second Ctrl-C aborts at once."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.set = False
        self._log = log
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.set

    def _handle(self, signum, _frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        self._log("stopping: the image in flight is dropped, finished ones are kept (Ctrl-C again to abort)")

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run_batch(job_file: JobFile, backend, options: BatchOptions) -> BatchSummary:
    """Run every job of ``job_file`` not yet done in ``options.out`` on ``backend`` (the caller closes it)."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    with OutLock(out):
        bar = ProgressBar(0, "batch")
        for name in remove_temporaries(out):
            bar.log(f"removed {name}, left half-written by an earlier run")
        jobs = list(job_file.jobs)
        problems = backend.problems(jobs)
        if problems:
            raise JobFileError(problems, job_file.path)
        manifest = Manifest.load(out)
        units = units_of(jobs, backend.model["hash"])
        manifest.begin(job_file.path, backend.model, backend.mode, jobs, units)
        pending = [u for u in units if not manifest.done(u)]
        manifest.count("skipped", len(units) - len(pending))
        manifest.save()
        summary = BatchSummary(jobs=len(jobs), skipped=len(units) - len(pending), manifest=manifest.path)
        if len(pending) < len(units):
            bar.log(f"{len(units) - len(pending)} of {len(units)} output sets are done already (manifest): "
                    "skipping them")
        summary.interrupted = _generate(backend, manifest, pending, options, bar, summary)
        failures = manifest.failures()
        statuses = [manifest.job_status(j.name) for j in jobs]
        summary.done, summary.failed = statuses.count("done"), statuses.count("failed")
        summary.pending, summary.failures = statuses.count("pending"), failures
        if options.blend is not None and not summary.interrupted and not summary.lost:
            summary.blend = _blend_step(jobs, units, manifest, options, bar)
            manifest.set_blend(summary.blend)
            manifest.save()
        if job_file.projects and not summary.interrupted and not summary.lost:
            from .project import run_projects

            summary.projects = run_projects(list(job_file.projects), backend, out, options.blender, bar.log)
        return summary


def _generate(backend, manifest: Manifest, pending: list[Unit], options: BatchOptions, bar: ProgressBar,
              summary: BatchSummary) -> bool:
    """Make ``pending``; returns True when the user stopped the run."""
    steps = {u.key: backend.steps(u) for u in pending if u.error is None}
    bar.total, bar.start = sum(steps.values()), time.monotonic()  # the ETA counts from the first step
    left = {}
    for unit in pending:
        left[unit.job] = left.get(unit.job, 0) + 1
    jobs_total, images_total = len(left), len(pending)
    progress = {"steps": 0, "images": 0, "jobs": 0}

    def note() -> str:
        return f"jobs {progress['jobs']}/{jobs_total}  images {progress['images']}/{images_total}"

    def on_steps(n: int) -> None:
        progress["steps"] += n
        bar.update(progress["steps"], note())

    def finished(unit: Unit) -> None:
        progress["images"] += 1
        left[unit.job] -= 1
        progress["jobs"] += left[unit.job] == 0

    interrupted = False
    for unit in [u for u in pending if u.error is not None]:  # an input image it cannot read: fails alone
        manifest.fail(unit, unit.error)
        finished(unit)
        bar.log(f"FAILED {unit.stem} (job {unit.job}): {unit.error.message}")
    pending = [u for u in pending if u.error is None]
    manifest.save()
    with _StopFlag(bar.log) as stop:
        try:
            for item in backend.run(groups(pending, options.batch_size), stop, on_steps):
                if isinstance(item, Failure):
                    for unit in item.units:
                        manifest.fail(unit, item.error)
                        finished(unit)
                        bar.log(f"FAILED {unit.stem} (job {unit.job}): {item.error.message}")
                else:
                    unit = item.unit
                    stale = manifest.stale_files(unit, item.files)
                    try:
                        write_set(options.out, item.files)
                    except (AigcError, ValueError) as exc:
                        error = exc if isinstance(exc, AigcError) else AigcError("output_unwritable", str(exc))
                        manifest.fail(unit, error)
                        bar.log(f"FAILED {unit.stem} (job {unit.job}): {error.message}")
                    else:
                        for path in stale:  # the set this stem had before (other options) but not now
                            path.unlink(missing_ok=True)
                        manifest.record(item)
                        bar.log(f"[{progress['images'] + 1}/{images_total}] {unit.stem}  seed {unit.request.seed}"
                                f"  {item.seconds:.2f} s  ({len(item.files)} files)")
                    finished(unit)
                manifest.save()
                bar.update(progress["steps"], note())
        except (Interrupted, KeyboardInterrupt):
            interrupted = True
        except BackendLost as exc:
            summary.lost = exc.message
            bar.log(f"stopped: {exc.message}")
        finally:
            bar.close()
            manifest.finish(interrupted)
            manifest.save()
    summary.generated = manifest.data["runs"][-1]["generated"]
    return interrupted


def _blend_step(jobs, units, manifest: Manifest, options: BatchOptions, bar: ProgressBar) -> dict:
    from .blend import apply_to_blend, build_plan

    plan = build_plan(jobs, units, manifest, options.blend, options.out, options.export_glb)
    bar.log(f"Blender: {len(plan['textures'])} texture sets and {len(plan['backdrops'])} backdrops into "
            f"{Path(plan['copy']).name}" + (f", GLB {plan['glb']}" if plan["glb"] else ""))
    try:
        report = apply_to_blend(plan, options.out, options.blender)
    except AigcError as exc:
        return {"source": plan["source"], "copy": None, "glb": None, "error": exc.message}
    return {"source": plan["source"], "copy": report["copy"], "glb": report["glb"], "applied": report["applied"],
            "problems": report["problems"], "error": None}


def describe(summary: BatchSummary, out: Path) -> str:
    """The closing lines: counts, failures, where the manifest is."""
    lines = [f"batch: {summary.jobs} jobs: {summary.done} done ({summary.generated} output sets made now, "
             f"{summary.skipped} already there), {summary.failed} failed, {summary.pending} to do"]
    for job, error in summary.failures.items():
        lines.append(f"  FAILED {job}: {error['code']}: {error['message']}")
    if summary.blend:
        if summary.blend.get("error"):
            lines.append(f"  Blender step FAILED: {summary.blend['error']}")
        for problem in summary.blend.get("problems") or []:
            lines.append(f"  Blender: {problem['job']}: {problem['message']}")
        if summary.blend.get("copy"):
            lines.append(f"blend copy: {summary.blend['copy']}" + (f"  GLB: {summary.blend['glb']}"
                                                                   if summary.blend.get("glb") else ""))
    for p in summary.projects:
        if p.get("error"):
            lines.append(f"  project {p['job']} FAILED: {p['error']['message']}")
        else:
            seen = ", ".join(f"{t['object']} {t['coverage']:.0%}" for t in p["textures"])
            lines.append(f"project {p['job']}: {seen} seen; copy {p['copy']}" + (f"  GLB: {p['glb']}" if p.get("glb")
                                                                                 else ""))
    if summary.lost:
        lines.append(f"stopped early: {summary.lost}")
    if summary.interrupted:
        lines.append("interrupted: run the same command again to finish (finished output sets are skipped)")
    elif summary.failed or summary.pending:
        lines.append("run the same command again to retry what failed (finished output sets are skipped)")
    lines.append(f"manifest: {out / MANIFEST_NAME}")
    return "\n".join(lines)
