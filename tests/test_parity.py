"""Export -> runtime -> image matches diffusers' own pipeline on the same initial latents (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.request import GenerateRequest


def _diffusers_image(src, latents: np.ndarray, **kwargs) -> np.ndarray:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(latents=torch.from_numpy(latents), output_type="np", **kwargs)
    return out.images


@pytest.mark.parametrize("steps", [4, 20])
def test_sd_matches_diffusers(tiny_sd, tiny_sd_src, steps):
    pipe = Pipeline.load(tiny_sd, provider="cpu")
    latents = np.random.default_rng(3).standard_normal((2, 4, 32, 32), dtype=np.float32)
    ours = pipe.generate(GenerateRequest("red brick wall", negative_prompt="blurry", steps=steps, guidance=7.5,
                                         count=2, seed=0), noise=Noise(latents))
    ref = _diffusers_image(tiny_sd_src, latents, prompt="red brick wall", negative_prompt="blurry",
                           num_images_per_prompt=2, num_inference_steps=steps, guidance_scale=7.5)
    assert ref.std() > 0.05  # a real image, not a constant
    assert np.max(np.abs(np.stack(ours.images) - ref)) < 1e-4


def test_sdxl_matches_diffusers(tiny_sdxl, tiny_sdxl_src):
    pipe = Pipeline.load(tiny_sdxl, provider="cpu")
    latents = np.random.default_rng(4).standard_normal((1, 4, 32, 32), dtype=np.float32)
    ours = pipe.generate(GenerateRequest("weathered blue wooden planks", steps=4, guidance=5.0, seed=0),
                         noise=Noise(latents))
    # our empty negative prompt is diffusers' None: SDXL then uses zero embeddings
    ref = _diffusers_image(tiny_sdxl_src, latents, prompt="weathered blue wooden planks",
                           num_inference_steps=4, guidance_scale=5.0)
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4
    with_negative = pipe.generate(GenerateRequest("weathered blue wooden planks", negative_prompt="dark",
                                                  steps=4, guidance=5.0, seed=0), noise=Noise(latents))
    ref_negative = _diffusers_image(tiny_sdxl_src, latents, prompt="weathered blue wooden planks",
                                    negative_prompt="dark", num_inference_steps=4, guidance_scale=5.0)
    assert np.max(np.abs(with_negative.images[0] - ref_negative[0])) < 1e-4


def test_lcm_distilled_matches_diffusers(tiny_lcm, tiny_lcm_src):
    pipe = Pipeline.load(tiny_lcm, provider="cpu")
    assert pipe.manifest["distillation"] == "lcm"
    latents = np.random.default_rng(5).standard_normal((1, 4, 32, 32), dtype=np.float32)
    # one step: LCM injects no noise on its last step, so both sides are deterministic
    ours = pipe.generate(GenerateRequest("green grass", steps=1, seed=0), noise=Noise(latents))
    ref = _diffusers_image(tiny_lcm_src, latents, prompt="green grass", num_inference_steps=1,
                           guidance_scale=ours.request.guidance)
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4
