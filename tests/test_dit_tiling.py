"""Seamless textures and panoramas for DiTs: circular VAE decode + the latents rolled by a fresh offset at every
step (engine/families.py). Measured with the project's seam ratio against a non-tiling control, and with the
shift test (rolling the initial latents rolls the image) to the tolerance the method reaches on a tiny FLUX.1
(benchmarks/bench_dit_tiling.py has the numbers for SD 3 and the alternatives)."""

from __future__ import annotations

import numpy as np
import pytest

from aigc_bridge.assets.seams import seam_ratio
from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.request import GenerateRequest

PROMPT = "small white hexagon tiles"


@pytest.fixture(scope="module")
def flux(tiny_flux_dev):
    return Pipeline.load(tiny_flux_dev, provider="cpu")


def _image(pipe, tile, seed, latents=None):
    req = GenerateRequest(PROMPT, steps=4, guidance=2.0, seed=seed, tile=tile, width=64, height=64)
    return pipe.generate(req, noise=None if latents is None else Noise(latents)).images[0]


def _ratios(pipe, tile):
    images = [_image(pipe, tile, seed) for seed in (0, 1, 2)]
    return np.mean([seam_ratio(i, 1) for i in images]), np.mean([seam_ratio(i, 0) for i in images])


def test_tile_both_has_no_seam_and_the_control_has_one(flux):
    x, y = _ratios(flux, "both")
    cx, cy = _ratios(flux, "none")
    assert 0.9 < x < 1.15 and 0.9 < y < 1.15, (x, y)  # the tiny UNet with circular padding: 1.01 / 1.01
    assert cx < 0.9 and cy < 0.9, (cx, cy)


def test_panorama_wraps_on_x_not_y(flux):
    x, y = _ratios(flux, "x")
    assert 0.9 < x < 1.15 and y < 0.9, (x, y)


def test_rolling_the_latents_rolls_the_image(flux):
    """Exact for circular UNets; the random per-step roll reaches 2e-3 on this tiny FLUX.1 (SD 3's absolute
    position embeddings: 0.1), against 0.4 without tiling."""
    latents = np.random.default_rng(7).standard_normal((1, 16, 32, 32), dtype=np.float32)
    base = _image(flux, "both", 0, latents)
    for axis in (2, 3):
        rolled = _image(flux, "both", 0, np.roll(latents, 4, axis=axis))
        err = np.abs(np.roll(base, 4 * flux.manifest["vae_scale_factor"], axis=axis - 2) - rolled).max()
        assert err < 1e-2, (axis, err)


def test_rolled_tiling_is_reproducible_per_image(flux):
    def run(seed, count=1):
        return flux.generate(GenerateRequest(PROMPT, steps=2, guidance=2.0, seed=seed, count=count, tile="both",
                                             width=64, height=64)).images

    batch = run(10, 2)
    assert np.max(np.abs(batch[1] - run(11)[0])) < 1e-5
    assert np.array_equal(batch[0], run(10, 2)[0])
