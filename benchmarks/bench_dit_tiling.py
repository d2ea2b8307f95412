"""Seamless textures and panoramas for DiTs: which latent-space method, measured side by side.

A transformer has no padding to make circular, so `--tile both|x` needs a latent-space method beside the VAE's
circular decode. Compared on tiny SD 3 and FLUX.1 models (random weights, 64x64, 4 steps, several seeds), with
the project's seam ratio (assets.seams: ~1 = tiles, larger = a visible seam) on x and y, and the shift test
(roll the initial latents by k: is the image rolled by k * vae factor? max error):

- none: the plain pipeline (control);
- vae: circular VAE decode only, the transformer as is;
- roll: + the latents rolled by a fresh random offset before every denoiser call and the prediction rolled back
  (what the runtime ships: engine/families.py);
- windows: + the denoiser run on the latents padded by wrapping (a quarter of each side), its prediction cropped
  (one overlapping wrapped window: every border token sees its wrapped neighbours, at ~2.25x the tokens).

The tiny SD's UNet with circular padding (tile both) is the reference level for "tiles".
Run: PYTHONPATH=. python benchmarks/bench_dit_tiling.py [--work .cache/bench-dit]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from aigc_bridge.assets.seams import seam_ratio
from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.engine.families import RolledDenoiser
from aigc_bridge.request import GenerateRequest

SEEDS = range(4)
K = 4  # latent pixels rolled in the shift test (a multiple of both patch sizes)


class WrappedWindow:
    """The denoiser on the latents padded by wrapping (``margin`` latent pixels each side), the centre kept."""

    def __init__(self, runner, tile: str, margin: int) -> None:
        self.runner, self.tile, self.margin = runner, tile, margin

    def __call__(self, feeds, run_options=None):
        m = self.margin
        pad = ((0, 0), (0, 0), (0 if self.tile == "x" else m,) * 2, (m, m))
        out = self.runner({**feeds, "sample": np.pad(feeds["sample"], pad, mode="wrap")}, run_options)[0]
        h, w = feeds["sample"].shape[-2:]
        top = 0 if self.tile == "x" else m
        return [out[:, :, top:top + h, m:m + w]]


def _with_method(pipe: Pipeline, method: str) -> None:
    parts = pipe.parts
    if method == "roll":
        patch = parts.manifest["patch_size"]
        parts.denoiser = lambda runner, req, seeds: RolledDenoiser(runner, seeds, req.tile, patch)
    elif method == "windows":
        patch = parts.manifest["patch_size"]
        parts.denoiser = lambda runner, req, seeds: WrappedWindow(runner, req.tile, 8 // patch * patch)
    else:
        parts.denoiser = lambda runner, req, seeds: runner


def measure(pipe: Pipeline, method: str, tile: str, steps: int = 4) -> dict:
    if pipe.manifest["family"] in ("sd3", "flux"):
        _with_method(pipe, method)
    c = pipe.manifest["latent_channels"]
    ratios_x, ratios_y, shift_x, shift_y, seconds = [], [], [], [], []
    for seed in SEEDS:
        latents = np.random.default_rng(seed).standard_normal((1, c, 32, 32), dtype=np.float32)
        guidance = 2.0 if pipe.manifest.get("guidance_kind", "cfg") != "none" else None
        req = GenerateRequest("weathered red brick wall", steps=steps, guidance=guidance, seed=seed, tile=tile,
                              width=64, height=64)
        start = time.perf_counter()
        image = pipe.generate(req, noise=Noise(latents)).images[0]
        seconds.append(time.perf_counter() - start)
        ratios_x.append(seam_ratio(image, 1))
        ratios_y.append(seam_ratio(image, 0))
        if seed == 0:
            factor = pipe.manifest["vae_scale_factor"]
            for axis, errs in ((3, shift_x), (2, shift_y)):
                rolled = pipe.generate(req, noise=Noise(np.roll(latents, K, axis=axis))).images[0]
                errs.append(float(np.abs(np.roll(image, K * factor, axis=axis - 2) - rolled).max()))
    return {"x": float(np.mean(ratios_x)), "y": float(np.mean(ratios_y)), "shift_x": shift_x[0],
            "shift_y": shift_y[0], "s": float(np.median(seconds))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(".cache/bench-dit"))
    ns = parser.parse_args(argv)
    from aigc_bridge_export.onnx_export import export_pipeline
    from aigc_bridge_export.tiny import build_tiny_flux, build_tiny_sd, build_tiny_sd3

    builders = {"sd (UNet)": (build_tiny_sd, {}), "sd3": (build_tiny_sd3, {}),
                "flux-dev": (build_tiny_flux, {"dev": True})}
    rows = ["| model | method | tile | seam ratio x | seam ratio y | roll 4 -> image rolled? max err x / y | s/image |",
            "|---|---|---|---|---|---|---|"]
    for name, (build, kwargs) in builders.items():
        slug = name.split()[0]
        src, out = ns.work / f"{slug}-src", ns.work / f"{slug}-onnx"
        if not (src / "model_index.json").exists():
            build(src, **kwargs)
        if not (out / "model.json").exists():
            export_pipeline(src, out, overwrite=True, model_id=slug, log=lambda _m: None,
                            **({"t5_max_length": 96} if slug != "sd" else {}))
        pipe = Pipeline.load(out, provider="cpu")
        plans = ([("circular", "none"), ("circular", "both"), ("circular", "x")] if slug == "sd" else
                 [("none", "none"), ("vae", "both"), ("roll", "both"), ("windows", "both"), ("roll", "x"),
                  ("windows", "x")])
        for method, tile in plans:
            r = measure(pipe, method, tile)
            rows.append(f"| {name} | {method if tile != 'none' else 'control'} | {tile} | {r['x']:.2f} | {r['y']:.2f} "
                        f"| {r['shift_x']:.1e} / {r['shift_y']:.1e} | {r['s']:.2f} |")
            print(rows[-1], file=sys.stderr)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
