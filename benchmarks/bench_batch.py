"""Batch throughput (images/s): batch sizes 1, 2 and 4 in one process, and 1 and 2 Ray actors, in one run.

Each configuration runs the same job file (6 jobs x 4 seeds = 24 plain 64 x 64 textures, 4 Euler steps,
tiny SD-like model) into a fresh --out through ``run_batch``, so the time includes everything a batch does:
generation, PNG + provenance building, atomic writes and the manifest. Configurations alternate round by
round so drift on a shared machine hits all alike; the best round is reported. Ray rows are shown twice:
all in (actor start-up and model load included, what a run costs) and steady (from the first result on).

    python benchmarks/bench_batch.py [--rounds 2] [--seeds 4] [--jobs 6] [--steps 4] [--model DIR] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _model(tmp: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    from aigc_bridge_export.onnx_export import export_pipeline
    from aigc_bridge_export.tiny import build_tiny_sd

    return export_pipeline(build_tiny_sd(tmp / "diffusers"), tmp / "onnx", log=lambda _m: None)


def _jobs(jobs: int, seeds: int, steps: int) -> str:
    seed_list = ", ".join(str(s) for s in range(seeds))
    return f"[defaults]\nsteps = {steps}\nscheduler = \"euler\"\n" + "".join(
        f'\n[[texture]]\nname = "t{j}"\nprompt = "texture {j}"\nseeds = [{seed_list}]\n' for j in range(jobs))


class _Timed:
    """Wraps a backend to note when its first result arrives (Ray's actor start-up ends there)."""

    def __init__(self, backend) -> None:
        self.backend, self.first = backend, None
        self.mode, self.model = backend.mode, backend.model

    def problems(self, jobs):
        return self.backend.problems(jobs)

    def steps(self, unit):
        return self.backend.steps(unit)

    def run(self, groups, stop, on_steps):
        for item in self.backend.run(groups, stop, on_steps):
            if self.first is None:
                self.first = time.perf_counter()
            yield item


def _measure(job_file, backend, out: Path, batch_size: int) -> tuple[float, float | None]:
    from aigc_bridge.batch import BatchOptions, run_batch

    timed = _Timed(backend)
    start = time.perf_counter()
    summary = run_batch(job_file, timed, BatchOptions(out=out, batch_size=batch_size))
    end = time.perf_counter()
    images = summary.generated
    if summary.exit_code != 0 or images == 0:
        raise SystemExit(f"the batch failed: {summary}")
    steady = (images - 1) / (end - timed.first) if timed.first and images > 1 else None
    return images / (end - start), steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=4, help="images per job (consecutive seeds batch together)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--model", type=Path, help="a model package (default: build the tiny test model)")
    parser.add_argument("--no-ray", action="store_true", help="only the in-process rows")
    ns = parser.parse_args()

    from aigc_bridge.batch import parse_job_file
    from aigc_bridge.batch.backends import LocalBackend

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = _model(tmp_path, ns.model)
        job_file = parse_job_file(_jobs(ns.jobs, ns.seeds, ns.steps))
        local = LocalBackend(model, provider="cpu", threads=cores)
        configs: list[tuple[str, object, int]] = [(f"local, batch size {b}", local, b) for b in (1, 2, 4)]
        ray = None
        if not ns.no_ray:
            import ray

            from aigc_bridge.batch.ray_backend import RayBackend

            ray.init(num_cpus=cores, num_gpus=0, include_dashboard=False, log_to_driver=False)
            for workers in (1, 2):
                configs.append((f"ray, {workers} worker{'s' if workers > 1 else ''}, batch size 1",
                                lambda w=workers: RayBackend(model, workers=w, batch_size=1), 1))
        best: dict[str, tuple[float, float | None]] = {}
        for rnd in range(ns.rounds):
            for name, backend, batch_size in configs:
                made = backend() if callable(backend) else backend
                try:
                    rate, steady = _measure(job_file, made, tmp_path / f"out-{rnd}-{len(best)}-{name[:3]}"
                                            f"{batch_size}{id(made)}", batch_size)
                finally:
                    if made is not local:
                        made.close()
                if name not in best or rate > best[name][0]:
                    best[name] = (rate, steady)
        if ray is not None:
            ray.shutdown()

    images = ns.jobs * ns.seeds
    print(f"{images} images of 64 x 64, {ns.steps} steps, {cores} cores, best of {ns.rounds} rounds")
    print(f"{'configuration':36s} {'images/s':>9s} {'steady':>9s}")
    for name, (rate, steady) in best.items():
        print(f"{name:36s} {rate:9.2f} {steady if steady is None else f'{steady:9.2f}':>9}")
    base = best["local, batch size 1"][0]
    for name, (rate, _) in best.items():
        if name != "local, batch size 1":
            print(f"  {name}: {rate / base:.2f}x local batch size 1")


if __name__ == "__main__":
    main()
