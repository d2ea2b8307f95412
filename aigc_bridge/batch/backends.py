"""Where the images are made: a Pipeline in this process (``--model``) or a running sidecar (``--endpoint``,
``--connection-file``); Ray is in ``ray_backend``. Each turns groups of units into ``Rendered`` output sets
(or ``Failure``s) and stops between steps when asked; the runner does everything else the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..assets.outputs import BuiltOutput
from ..errors import AigcError, Cancelled, InvalidRequest
from ..request import GenerateRequest
from .jobfile import REQUEST_KEYS, engine_size_problem
from .plan import Unit, group_request
from .render import Rendered, render_group
from .spec import Job, Problem

BUSY_RETRIES = 600  # a busy sidecar says when to retry (about a second): wait up to ~10 minutes
StopFlag = Callable[[], bool]
StepSink = Callable[[int], None]  # image-steps just done


@dataclass
class Failure:
    units: list[Unit]
    error: AigcError


class Interrupted(Exception):
    """The user asked to stop (Ctrl-C): the group in flight is dropped, nothing of it is written."""


class BackendLost(AigcError):
    """Nothing more can be made (the sidecar stopped answering, the Ray cluster failed): the run stops with
    what it has, instead of failing every remaining job one timeout at a time."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


def as_error(exc: BaseException) -> AigcError:
    if isinstance(exc, AigcError):
        return exc
    return AigcError("internal", f"{type(exc).__name__}: {exc}")


def resolution_problems(resolve: Callable[[GenerateRequest], GenerateRequest], jobs: list[Job]) -> list[Problem]:
    """What this model refuses (sizes it cannot make, graphs it lacks), per job, before anything runs."""
    job_key = {f: k for k, f in REQUEST_KEYS.items()}
    problems = []
    for job in jobs:
        if job.input_error is not None:  # fails when the batch runs, with what was wrong with the image
            continue
        for request in {dataclasses.replace(r, seed=0) for r in job.requests}:
            try:
                resolved = resolve(request)
            except InvalidRequest as exc:
                problems.append(Problem(job.where, job_key.get(exc.field, exc.field), exc.message, job.line))
                break
            problem = engine_size_problem(job.kind, resolved.width, resolved.height, resolved.target_size)
            if problem:  # the model's native size decides the aspect when the job gives none
                problems.append(Problem(job.where, "target_size", problem, job.line))
                break
    return problems


class LocalBackend:
    """The engine in this process."""

    mode = "local"

    def __init__(self, model_dir: Path, provider: str | None = None, threads: int | None = None) -> None:
        from ..engine import Pipeline

        self.pipeline = Pipeline.load(model_dir, provider=provider, threads=threads)
        manifest = self.pipeline.manifest
        self.model = {"id": manifest["model_id"], "hash": manifest["package_hash"],
                      "path": str(Path(model_dir).resolve())}

    def problems(self, jobs: list[Job]) -> list[Problem]:
        return resolution_problems(self.pipeline.resolve, jobs)

    def steps(self, unit: Unit) -> int:
        return self.pipeline.denoising_steps(self.pipeline.resolve(unit.request))  # an init runs fewer

    def run(self, groups: list[list[Unit]], stop: StopFlag, on_steps: StepSink) -> Iterator[Rendered | Failure]:
        for group in groups:
            if stop():
                raise Interrupted
            size = len(group)

            def step(_event, size=size) -> bool:  # every engine step advances each image of the group
                on_steps(size)
                return not stop()

            try:
                yield from render_group(self.pipeline, group, callback=step)
            except Cancelled:
                raise Interrupted from None
            except Exception as exc:  # one bad job must not end the batch
                yield Failure(group, as_error(exc))

    def close(self) -> None:
        pass


class SidecarBackend:
    """A running sidecar through the client: this process loads no model. The request key of each group is
    its content key, so a rerun after a crash picks up a result the server already made."""

    mode = "sidecar"

    def __init__(self, client) -> None:
        self.client = client
        models = client.list_models()
        current = next((m for m in models if m.get("loaded")), None)
        if current is None:
            raise AigcError("no_model", "the sidecar has no model loaded; start it with --model DIR", "model")
        self.model = {"id": current["id"], "hash": current["hash"], "endpoint": getattr(client, "endpoint", None)}
        self._default_steps = current.get("steps") or 1

    def problems(self, jobs: list[Job]) -> list[Problem]:
        return []  # the server checks sizes; what it refuses fails that job alone

    def steps(self, unit: Unit) -> int:
        steps = unit.request.steps or self._default_steps
        if unit.request.init is not None:  # the steps strength keeps (the server's progress total)
            steps = max(1, min(int(steps * unit.request.effective_strength), steps))
        return steps

    def run(self, groups: list[list[Unit]], stop: StopFlag, on_steps: StepSink) -> Iterator[Rendered | Failure]:
        for group in groups:
            if stop():
                raise Interrupted
            try:
                yield from self._generate(group, stop, on_steps)
            except (Interrupted, BackendLost):
                raise
            except Cancelled:
                if stop():
                    raise Interrupted from None
                yield Failure(group, AigcError("cancelled", "the job was cancelled on the sidecar"))
            except Exception as exc:
                yield Failure(group, as_error(exc))

    def _generate(self, group: list[Unit], stop: StopFlag, on_steps: StepSink) -> list[Rendered]:
        from ..client import ServerBusy, ServerUnavailable

        for _attempt in range(BUSY_RETRIES):
            try:
                return self._generate_once(group, stop, on_steps)
            except ServerBusy as exc:  # another client's jobs fill the queue: wait our turn
                deadline = time.monotonic() + (exc.retry_after_s or 1.0)
                while time.monotonic() < deadline:
                    if stop():
                        raise Interrupted from None
                    time.sleep(0.1)
            except ServerUnavailable as exc:
                raise BackendLost(f"{exc.message}; start the sidecar again and rerun to finish") from None
        raise AigcError("busy", f"the sidecar stayed busy through {BUSY_RETRIES} tries")

    def _generate_once(self, group: list[Unit], stop: StopFlag, on_steps: StepSink) -> list[Rendered]:
        from ..client import request_fields

        request = group_request(group)
        fields = request_fields(request)  # input images as they are: the client sends them as frames
        done = [0]

        def progress(event) -> bool:
            if event.stage != "queued" and event.step > done[0]:
                on_steps((event.step - done[0]) * len(group))
                done[0] = event.step
            return not stop()

        key = hashlib.sha256("".join(u.key for u in group).encode()).hexdigest()
        response = self.client.generate(request.prompt, on_progress=progress, request_key=key, **fields)
        out = []
        for unit, image in zip(group, response.images):
            files = [BuiltOutput("image", unit.stem + ".png", image.data, image.mime, "srgb", image.width,
                                 image.height)]
            files += [BuiltOutput(o.role, unit.stem + o.suffix, o.data, o.mime, o.colour_space)
                      for o in image.outputs]
            files = [_with_batch_provenance(f, unit, files) for f in files]
            meta = image.metadata
            info = {"model_id": meta.get("model_id"), "model_hash": meta.get("model_hash"),
                    "provider": meta.get("provider"), "steps": response.request.get("steps")}
            seconds = float((meta.get("timings_ms") or {}).get("total", 0.0)) / 1e3
            out.append(Rendered(unit, files, seconds, info))
        return out

    def close(self) -> None:
        self.client.close()


def _with_batch_provenance(built: BuiltOutput, unit: Unit, files: list[BuiltOutput]) -> BuiltOutput:
    """The server names its files after a stem of its own; the provenance JSON written here names ours,
    and says which batch job made them, as in a local run."""
    if built.role != "provenance":
        return built
    try:
        doc = json.loads(built.data)
    except ValueError:
        return built
    names = {f.role: f.filename for f in files}
    for entry in doc.get("files", []):
        if isinstance(entry, dict) and entry.get("role") in names:
            entry["filename"] = names[entry["role"]]
    doc["batch"] = unit.provenance()
    data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return dataclasses.replace(built, data=data)
