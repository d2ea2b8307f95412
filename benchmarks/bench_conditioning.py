"""Image to image at strength 0.5 against text to image with the same steps, side by side in one process.

Both run the same model, size, scheduler and step count; img2img runs the last half of the schedule plus one
VAE-encoder pass, so the expected ratio is ~0.5 plus the encoder's share. The two alternate call by call over
several rounds (drift in a shared machine's speed hits both alike); the table shows medians, the ratio of the
medians, and the encoder's median time (from the result's timings, the "encode" stage minus text encoding).

    python benchmarks/bench_conditioning.py [--model DIR ...] [--steps 20] [--strength 0.5] [--reps 7]

Without --model it times the shipped texture-mini (32 px) and a tiny SD 1.x architecture exported to a temp
folder (64 px, needs the export extra).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bench(model: Path, steps: int, strength: float, reps: int, threads: int | None) -> dict:
    from aigc_bridge.engine import Pipeline
    from aigc_bridge.input_image import InputImage
    from aigc_bridge.request import GenerateRequest

    pipe = Pipeline.load(model, provider="cpu", threads=threads)
    text = GenerateRequest("red brick wall", steps=steps, seed=0, tile="none", scheduler="euler")
    size = pipe.resolve(text)
    init_pixels = pipe.generate(text).image_uint8(0)
    init = InputImage.from_bytes(_png(init_pixels), "init")
    image = GenerateRequest("blue brick wall", steps=steps, seed=0, tile="none", scheduler="euler", init=init,
                            strength=strength)
    times: dict[str, list[float]] = {"txt2img": [], "img2img": []}
    encode: dict[str, list[float]] = {"txt2img": [], "img2img": []}
    for request in (text, image):  # warm-up
        pipe.generate(request)
    for _ in range(reps):
        for name, request in (("txt2img", text), ("img2img", image)):
            t = time.perf_counter()
            result = pipe.generate(request)
            times[name].append((time.perf_counter() - t) * 1e3)
            encode[name].append(result.timings_ms["encode"])
    med = {k: statistics.median(v) for k, v in times.items()}
    encoder = statistics.median(encode["img2img"]) - statistics.median(encode["txt2img"])
    return {"model": pipe.manifest["model_id"], "size": f"{size.width}x{size.height}", "steps": steps,
            "txt2img_ms": med["txt2img"], "img2img_ms": med["img2img"], "ratio": med["img2img"] / med["txt2img"],
            "encoder_ms": encoder}


def _tiny_sd(root: Path) -> Path:
    from aigc_bridge_export.onnx_export import export_pipeline
    from aigc_bridge_export.tiny import build_tiny_sd

    src = build_tiny_sd(root / "tiny-sd")
    export_pipeline(src, root / "tiny-sd-onnx", model_id="tiny-sd", seamless=False, log=lambda _m: None)
    return root / "tiny-sd-onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", help="model package (repeatable)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        models = args.model
        if not models:
            from aigc_bridge.models import default_model_dir

            models = [default_model_dir(), _tiny_sd(Path(scratch))]
        print(f"strength {args.strength}, {args.steps} steps (euler), {args.reps} alternating rounds, "
              f"{args.threads} threads; medians")
        print(f"{'model':<14} {'size':>7} {'txt2img ms':>11} {'img2img ms':>11} {'ratio':>6} {'encoder ms':>11}")
        for model in models:
            r = bench(model, args.steps, args.strength, args.reps, args.threads)
            print(f"{r['model']:<14} {r['size']:>7} {r['txt2img_ms']:>11.1f} {r['img2img_ms']:>11.1f} "
                  f"{r['ratio']:>6.2f} {r['encoder_ms']:>11.1f}")


if __name__ == "__main__":
    main()
