"""Scale-out on Ray Data: a pool of actors, each holding one Pipeline (one GPU each where the cluster has
GPUs), makes the output sets; the driver writes them, so writes stay atomic, inside --out, and recorded in
one manifest exactly as in a local run.

``map_batches`` with a callable class runs stateful actors (the model loads once per actor); an
``ActorPoolStrategy(size=N)`` fixes the pool (``concurrency=`` is deprecated since Ray 2.51) and
``batch_size`` must be given when GPUs are requested (Ray issue #42340). Results cross as a JSON header
and one bytes blob per unit (``render.pack``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import AigcError
from .backends import BackendLost, Failure, Interrupted, StepSink, StopFlag, as_error, resolution_problems
from .plan import Unit, groups
from .render import Rendered, pack, render_group, unpack
from .spec import Job, Problem


class RayRenderer:
    """Ray Data's callable class: constructed once per actor, then called with batches of units."""

    def __init__(self, model_dir: str, provider: str | None = None, threads: int | None = None) -> None:
        from ..engine import Pipeline

        self.pipeline = Pipeline.load(model_dir, provider=provider, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        units = [Unit.from_dict(json.loads(text)) for text in batch["unit"]]
        headers, blobs, errors = [], [], []
        for group in groups(units, len(units)):
            try:
                for rendered in render_group(self.pipeline, group):
                    header, blob = pack(rendered)
                    headers.append(header)
                    blobs.append(blob)
                    errors.append("")
            except Exception as exc:  # the job fails; the actor (and its model) lives on
                error = json.dumps(as_error(exc).to_dict())
                for unit in group:
                    headers.append(json.dumps({"unit": unit.to_dict()}))
                    blobs.append(b"")
                    errors.append(error)
        return {"header": np.array(headers, dtype=object), "blob": np.array(blobs, dtype=object),
                "error": np.array(errors, dtype=object)}


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise AigcError("missing_dependency", "--ray needs Ray Data: pip install 'aigc-bridge[ray]'",
                        "ray") from None
    return ray


class RayBackend:
    """The same units on a Ray cluster (``address``; None: RAY_ADDRESS, the latest local cluster, or a new
    local instance, as ``ray.init`` decides)."""

    mode = "ray"

    def __init__(self, model_dir: Path, address: str | None = None, workers: int | None = None,
                 batch_size: int = 1, provider: str | None = None) -> None:
        from ..engine import Pipeline
        from ..engine.package import ModelPackage

        ray = _import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
            self._started = True
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        self.workers = workers or max(1, gpus)
        if gpus and self.workers > gpus:
            raise AigcError("invalid_request", f"--workers {self.workers} but the Ray cluster has {gpus} GPUs "
                            "(one actor per GPU)", "workers")
        self.batch_size = batch_size
        self.model_dir = str(Path(model_dir).resolve())  # actors may start in another folder
        manifest = ModelPackage.load(self.model_dir, verify=False).manifest
        self.model = {"id": manifest["model_id"], "hash": manifest["package_hash"], "path": self.model_dir}

        # Pipeline.resolve reads only the manifest (and the memory budget, which is each actor's own, on its
        # own machine: not checked here): check requests without loading sessions.
        shim = Pipeline.__new__(Pipeline)
        shim.manifest, shim.memory_budget = manifest, None
        self._resolve = shim.resolve
        per_worker = max(1, cpus // self.workers)
        self._resources = ({"num_gpus": 1} if gpus else {"num_cpus": per_worker})
        self._constructor = {"model_dir": self.model_dir, "provider": provider,
                             "threads": None if gpus else per_worker}
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the batch draws its own
        logging.getLogger("ray.data").setLevel(logging.WARNING)

    def problems(self, jobs: list[Job]) -> list[Problem]:
        return resolution_problems(self._resolve, jobs)

    def steps(self, unit: Unit) -> int:
        return self._resolve(unit.request).steps

    def run(self, unit_groups: list[list[Unit]], stop: StopFlag, on_steps: StepSink) -> Iterator[Rendered | Failure]:
        units = [u for group in unit_groups for u in group]
        if not units:
            return
        dataset = self._ray.data.from_items([{"unit": json.dumps(u.to_dict(images=True))} for u in units])
        pool = self._ray.data.ActorPoolStrategy(size=self.workers)  # a fixed pool: one model per actor
        results = dataset.map_batches(RayRenderer, fn_constructor_kwargs=self._constructor,
                                      batch_size=self.batch_size, compute=pool, **self._resources)
        rows = iter(results.iter_rows())
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as exc:  # an actor could not start (no model at that path on a node), a node died
                raise BackendLost(f"the Ray run failed: {type(exc).__name__}: {str(exc)[:2000]}") from None
            if stop():
                raise Interrupted
            if row["error"]:
                unit = Unit.from_dict(json.loads(row["header"])["unit"])
                error = json.loads(row["error"])
                yield Failure([unit], AigcError(error.get("code", "internal"), error.get("message", ""),
                                                error.get("field")))
                continue
            rendered = unpack(row["header"], row["blob"])
            on_steps(self.steps(rendered.unit))
            yield rendered

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False
