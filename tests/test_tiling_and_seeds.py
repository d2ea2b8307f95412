"""Seamless modes commute with circular shifts; seeds reproduce, per image, whatever the batch."""

from __future__ import annotations

import numpy as np
import pytest

from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.request import GenerateRequest

K = 4  # latent pixels; a multiple of the tiny UNet's total downsampling (2)


def _pair(pipe, tile: str, axis: int):
    latents = np.random.default_rng(7).standard_normal((1, 4, 32, 32), dtype=np.float32)
    req = GenerateRequest("small white hexagon tiles", steps=4, guidance=7.5, seed=0, tile=tile)
    image = pipe.generate(req, noise=Noise(latents)).images[0]
    shifted = pipe.generate(req, noise=Noise(np.roll(latents, K, axis=axis))).images[0]
    factor = pipe.manifest["vae_scale_factor"]
    return np.roll(image, K * factor, axis=axis - 2), shifted  # latents NCHW -> image HWC


@pytest.mark.parametrize(("tile", "periodic_y", "periodic_x"),
                         [("both", True, True), ("x", False, True), ("none", False, False)])
def test_shifted_latents_shift_the_image(sd_pipeline, tile, periodic_y, periodic_x):
    for axis, periodic in ((2, periodic_y), (3, periodic_x)):
        expected, actual = _pair(sd_pipeline, tile, axis)
        err = np.max(np.abs(expected - actual))
        if periodic:
            assert err < 1e-5, f"tile={tile} axis={axis}: {err}"
        else:
            assert err > 1e-2, f"tile={tile} axis={axis} should not wrap"


def test_same_seed_same_image_and_different_seeds_differ(sd_pipeline):
    req = GenerateRequest("red brick wall", steps=4, seed=42)
    a = sd_pipeline.generate(req).images[0]
    b = sd_pipeline.generate(req).images[0]
    c = sd_pipeline.generate(GenerateRequest("red brick wall", steps=4, seed=43)).images[0]
    assert np.array_equal(a, b)
    assert np.mean(np.abs(a - c)) > 0.01


@pytest.mark.parametrize("scheduler", ["euler", "euler_a", "dpmpp_2m"])
def test_image_i_of_a_batch_is_seed_plus_i_alone(sd_pipeline, scheduler):
    batch = sd_pipeline.generate(GenerateRequest("green grass", steps=3, seed=10, count=3, scheduler=scheduler))
    assert batch.seeds == [10, 11, 12]
    alone = sd_pipeline.generate(GenerateRequest("green grass", steps=3, seed=11, scheduler=scheduler))
    assert np.max(np.abs(batch.images[1] - alone.images[0])) < 1e-5
    assert np.mean(np.abs(batch.images[0] - batch.images[1])) > 0.01


def test_random_seed_is_reported_and_reproduces(sd_pipeline):
    first = sd_pipeline.generate(GenerateRequest("grey gravel", steps=2))
    again = sd_pipeline.generate(GenerateRequest("grey gravel", steps=2, seed=first.seeds[0]))
    assert np.array_equal(first.images[0], again.images[0])


def test_every_scheduler_runs_through_the_pipeline(sd_pipeline):
    for name in ("euler", "euler_a", "ddim", "dpmpp_2m", "lcm"):
        image = sd_pipeline.generate(GenerateRequest("marble", steps=4, seed=1, scheduler=name)).images[0]
        assert image.shape == (64, 64, 3) and np.isfinite(image).all() and image.std() > 0.01, name


def test_progress_callback_sees_every_step_and_can_cancel(sd_pipeline):
    from aigc_bridge.errors import Cancelled

    seen = []
    sd_pipeline.generate(GenerateRequest("sand", steps=5, seed=1), callback=lambda ev: seen.append(ev.step))
    assert seen == [1, 2, 3, 4, 5]
    seen.clear()
    with pytest.raises(Cancelled, match="after step 2 of 5"):
        sd_pipeline.generate(GenerateRequest("sand", steps=5, seed=1),
                             callback=lambda ev: seen.append(ev.step) or ev.step < 2)
    assert seen == [1, 2]
