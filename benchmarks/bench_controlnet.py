"""ControlNet generation: our ONNX runtime against diffusers' StableDiffusionControlNetPipeline.

The SD 1.5 architecture (UNet 320/640/1280/1280, CLIP ViT-L text encoder, 4-block VAE) and a ControlNet made
from its UNet (diffusers' ``ControlNetModel.from_unet``), random weights (timing does not depend on them), at a
small size the CPU can time. Same prompt, size, steps, CFG, control image and initial latents on both sides;
each side in its own process with the same thread count and one warm-up call; the sides alternate over several
rounds, and the table shows medians over all calls and the ratio of the fastest calls.

    python benchmarks/bench_controlnet.py [--arch sd15|tiny] [--size 64] [--steps 4] [--rounds 2] [--reps 3]
"""

from __future__ import annotations

import argparse
import io
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


def _control_png(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    edges = ((np.sin(12 * x) * np.cos(9 * y)) > 0.2).astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(np.stack([edges] * 3, axis=-1)).save(buffer, format="PNG")
    return buffer.getvalue()


def worker(args: argparse.Namespace) -> None:
    timings = []
    png = _control_png(args.size)
    if args.worker == "ours":
        from aigc_bridge.engine import Pipeline
        from aigc_bridge.engine.conditioning import Noise
        from aigc_bridge.input_image import InputImage
        from aigc_bridge.request import ControlInput, GenerateRequest

        pipe = Pipeline.load(args.onnx, provider="cpu", threads=args.threads, verify=False)
        latents = _latents(args.size, pipe.manifest["vae_scale_factor"])
        control = ControlInput("canny", InputImage.from_bytes(png, "controls[0].image"), scale=1.0)
        req = GenerateRequest("red brick wall", steps=args.steps, guidance=7.5, seed=0, width=args.size,
                              height=args.size, scheduler="euler", tile="none", controls=(control,))
        for _ in range(args.reps + 1):
            t = time.perf_counter()
            pipe.generate(req, noise=Noise(latents))
            timings.append(time.perf_counter() - t)
    else:
        import torch
        from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
        from PIL import Image

        torch.set_num_threads(args.threads)
        controlnet = ControlNetModel.from_pretrained(args.controlnet, torch_dtype=torch.float32)
        pipe = StableDiffusionControlNetPipeline.from_pretrained(args.diffusers, controlnet=controlnet,
                                                                 torch_dtype=torch.float32, safety_checker=None,
                                                                 requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        latents = torch.from_numpy(_latents(args.size, pipe.vae_scale_factor))
        image = Image.open(io.BytesIO(png)).convert("RGB")
        for _ in range(args.reps + 1):
            t = time.perf_counter()
            with torch.inference_mode():
                pipe("red brick wall", image=image, latents=latents, num_inference_steps=args.steps,
                     guidance_scale=7.5, width=args.size, height=args.size, output_type="np")
            timings.append(time.perf_counter() - t)
    print(json.dumps({"times_s": timings[1:]}))


def _run(side: str, paths: dict, ns: argparse.Namespace) -> list[float]:
    cmd = [sys.executable, __file__, "--worker", side, "--onnx", str(paths["onnx"]), "--diffusers",
           str(paths["diffusers"]), "--controlnet", str(paths["controlnet"]), "--steps", str(ns.steps), "--reps",
           str(ns.reps), "--threads", str(ns.threads), "--size", str(ns.size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["times_s"]


def build(arch: str, root: Path) -> dict:
    """The base pipeline, a ControlNet from its UNet (random outputs: not the zero init) and our package."""
    import torch
    from aigc_bridge_export.bench import build_arch
    from aigc_bridge_export.onnx_export import export_pipeline
    from aigc_bridge_export.tiny import build_tiny_controlnet
    from diffusers import ControlNetModel, UNet2DConditionModel

    paths = {"diffusers": build_arch(arch, root / "diffusers"), "controlnet": root / "controlnet-canny"}
    if arch == "tiny":
        build_tiny_controlnet(paths["diffusers"], paths["controlnet"])
    else:
        unet = UNet2DConditionModel.from_pretrained(paths["diffusers"] / "unet")
        controlnet = ControlNetModel.from_unet(unet)
        del unet
        with torch.no_grad():
            for param in controlnet.parameters():
                if not param.abs().sum():
                    param.normal_(0, 0.02)
        controlnet.save_pretrained(paths["controlnet"])
        del controlnet
    paths["onnx"] = export_pipeline(paths["diffusers"], root / "onnx", controlnets=[f"{paths['controlnet']}=canny"],
                                    seamless=False, memory_profile=False, log=lambda _m: None)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--worker", choices=("ours", "diffusers"))
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--diffusers", type=Path)
    parser.add_argument("--controlnet", type=Path)
    ns = parser.parse_args()
    if ns.worker:
        return worker(ns)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        paths = build(ns.arch, Path(tmp))
        print(f"{ns.arch} architecture + one ControlNet, random weights, {ns.size}x{ns.size}, {ns.steps} Euler steps, "
              f"CFG 7.5, {ns.threads} threads (built and exported in {time.perf_counter() - started:.0f} s); "
              f"{ns.rounds} alternating rounds x {ns.reps} calls after a warm-up, each side in its own process\n")
        ours, theirs = [], []
        for _ in range(ns.rounds):
            ours += _run("ours", paths, ns)
            theirs += _run("diffusers", paths, ns)
        mo, mt = statistics.median(ours), statistics.median(theirs)
        print(f"{'':>10} | {'ms/img':>9} | {'ms/step':>8}")
        print(f"{'ours':>10} | {mo * 1e3:>9.0f} | {mo * 1e3 / ns.steps:>8.0f}")
        print(f"{'diffusers':>10} | {mt * 1e3:>9.0f} | {mt * 1e3 / ns.steps:>8.0f}")
        print(f"\nspeed-up: {mt / mo:.2f}x (medians), {min(theirs) / min(ours):.2f}x (fastest calls)")


if __name__ == "__main__":
    main()
