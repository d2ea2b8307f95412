"""Our ONNX runtime against diffusers' torch pipeline: same model, scheduler, steps and initial latents.

Each side runs in its own process with the same thread count (thread pools in one process fight and make the
second one look slow), with one warm-up call. The two sides alternate over several rounds, so drift in a shared
machine's speed hits both alike; the table shows medians over all calls, and the ratio of the fastest calls.

    python benchmarks/bench_runtime.py [--steps 4 20] [--rounds 3] [--reps 5] [--threads 2] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _latents(size: int, factor: int):
    import numpy as np

    return np.random.default_rng(0).standard_normal((1, 4, size // factor, size // factor), dtype=np.float32)


def worker(args: argparse.Namespace) -> None:
    timings, steps = [], args.steps[0]
    if args.worker == "ours":
        from aigc_bridge.engine import Pipeline
        from aigc_bridge.engine.conditioning import Noise
        from aigc_bridge.request import GenerateRequest

        pipe = Pipeline.load(args.onnx, provider="cpu", threads=args.threads)
        latents = _latents(args.size, pipe.manifest["vae_scale_factor"])
        req = GenerateRequest("red brick wall", steps=steps, guidance=7.5, seed=0, width=args.size,
                              height=args.size, scheduler="euler")
        for _ in range(args.reps + 1):
            t = time.perf_counter()
            pipe.generate(req, noise=Noise(latents))
            timings.append(time.perf_counter() - t)
    else:
        import torch
        from diffusers import DiffusionPipeline

        torch.set_num_threads(args.threads)
        pipe = DiffusionPipeline.from_pretrained(args.diffusers, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        latents = torch.from_numpy(_latents(args.size, pipe.vae_scale_factor))
        for _ in range(args.reps + 1):
            t = time.perf_counter()
            with torch.inference_mode():
                pipe("red brick wall", latents=latents, num_inference_steps=steps, guidance_scale=7.5,
                     width=args.size, height=args.size, output_type="np")
            timings.append(time.perf_counter() - t)
    print(json.dumps({"times_s": timings[1:]}))


def _run(side: str, models: dict, steps: int, ns: argparse.Namespace) -> list[float]:
    cmd = [sys.executable, __file__, "--worker", side, "--onnx", str(models["onnx"]), "--diffusers",
           str(models["diffusers"]), "--steps", str(steps), "--reps", str(ns.reps), "--threads", str(ns.threads),
           "--size", str(ns.size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["times_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 20])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--worker", choices=("ours", "diffusers"))
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--diffusers", type=Path)
    ns = parser.parse_args()
    if ns.worker:
        return worker(ns)
    from aigc_bridge_export.onnx_export import export_pipeline
    from aigc_bridge_export.tiny import build_tiny_sd

    with tempfile.TemporaryDirectory() as tmp:
        models = {"diffusers": build_tiny_sd(Path(tmp) / "diffusers")}
        models["onnx"] = export_pipeline(models["diffusers"], Path(tmp) / "onnx", log=lambda _m: None)
        print(f"tiny SD-like model, {ns.size}x{ns.size}, Euler, CFG 7.5, {ns.threads} threads; {ns.rounds} "
              f"alternating rounds x {ns.reps} calls after a warm-up, each side in its own process\n")
        print(f"{'steps':>5} | {'ours ms/img':>11} | {'ours ms/step':>12} | {'diffusers ms/img':>16} | "
              f"{'diffusers ms/step':>17} | {'speed-up (median)':>17} | {'speed-up (best)':>15}")
        print("-" * 111)
        for steps in ns.steps:
            ours, theirs = [], []
            for _ in range(ns.rounds):
                ours += _run("ours", models, steps, ns)
                theirs += _run("diffusers", models, steps, ns)
            mo, mt = statistics.median(ours), statistics.median(theirs)
            print(f"{steps:>5} | {mo * 1e3:>11.1f} | {mo * 1e3 / steps:>12.2f} | {mt * 1e3:>16.1f} | "
                  f"{mt * 1e3 / steps:>17.2f} | {mt / mo:>16.2f}x | {min(theirs) / min(ours):>14.2f}x")


if __name__ == "__main__":
    main()
