"""Image to image and inpainting match diffusers' pipelines on the same draws (fp32, CPU, max |diff| < 1e-4).

diffusers draws from one torch generator in a fixed order (the init's VAE posterior sample, then the noise,
then the masked image's posterior sample); the test draws the same numbers from the same seed and hands them to
the runtime as a ``Noise``, so both sides start from identical latents and the comparison covers the rest:
preprocessing, the encoder, the strength cut of the schedule, add_noise, the extra UNet channels or the blend.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.input_image import InputImage
from aigc_bridge.request import GenerateRequest
from tests.conftest import png_bytes
from tests.test_schedulers import diffusers_scheduler

SEED = 7


def _init_pixels(size: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth colourful image (random images encode to noise the VAE cannot tell from its own)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(2 * np.pi * (x * rng.uniform(1, 3) + y * rng.uniform(1, 3)) + rng.uniform(0, 6))
                for _ in range(3)]
    return np.round((np.stack(channels, axis=-1) * 0.5 + 0.5) * 255).astype(np.uint8)


def _square_mask(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[16:48, 20:52] = 255
    return mask


def _draws(n: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(SEED)
    return [torch.randn(shape, generator=g, dtype=torch.float32).numpy() for _ in range(n)]


def _reference(pipeline_class, src, scheduler: str | None, **kwargs) -> np.ndarray:
    extra = {"safety_checker": None, "requires_safety_checker": False} if pipeline_class.__name__.startswith(
        "StableDiffusionInpaint") else {}
    pipe = pipeline_class.from_pretrained(src, torch_dtype=torch.float32, **extra)
    if scheduler is not None:
        pipe.scheduler = diffusers_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(generator=torch.Generator().manual_seed(SEED), output_type="np", **kwargs).images


@pytest.fixture(scope="module")
def sd(tiny_sd):
    return Pipeline.load(tiny_sd, provider="cpu")


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "dpmpp_2m"])
@pytest.mark.parametrize("strength", [0.5, 0.8])
def test_img2img_matches_diffusers(sd, tiny_sd_src, scheduler, strength):
    from diffusers import StableDiffusionImg2ImgPipeline

    pixels = _init_pixels()
    eps, noise = _draws(2, (1, 4, 32, 32))
    request = GenerateRequest("red brick wall", negative_prompt="blurry", steps=10, guidance=7.5, seed=0,
                              scheduler=scheduler, init=InputImage.from_bytes(png_bytes(pixels), "init"),
                              strength=strength, tile="none")
    ours = sd.generate(request, noise=Noise(noise, init=eps))
    ref = _reference(StableDiffusionImg2ImgPipeline, tiny_sd_src, scheduler, prompt="red brick wall",
                     negative_prompt="blurry", image=Image.fromarray(pixels), strength=strength,
                     num_inference_steps=10, guidance_scale=7.5)
    assert ref.std() > 0.05
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4


def test_pndm_img2img_starts_its_warm_up_mid_schedule(sd, tiny_sd_src):
    from diffusers import StableDiffusionImg2ImgPipeline

    pixels = _init_pixels(seed=1)
    eps, noise = _draws(2, (1, 4, 32, 32))
    request = GenerateRequest("green grass", steps=8, guidance=7.5, seed=0, scheduler="pndm", tile="none",
                              init=InputImage.from_bytes(png_bytes(pixels), "init"), strength=0.6)
    ours = sd.generate(request, noise=Noise(noise, init=eps))
    ref = _reference(StableDiffusionImg2ImgPipeline, tiny_sd_src, "pndm", prompt="green grass",
                     image=Image.fromarray(pixels), strength=0.6, num_inference_steps=8, guidance_scale=7.5)
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4


def test_sdxl_img2img_matches_diffusers(tiny_sdxl, tiny_sdxl_src):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pixels = _init_pixels(seed=2)
    eps, noise = _draws(2, (1, 4, 32, 32))
    pipe = Pipeline.load(tiny_sdxl, provider="cpu")
    request = GenerateRequest("weathered blue wooden planks", steps=6, guidance=5.0, seed=0, tile="none",
                              init=InputImage.from_bytes(png_bytes(pixels), "init"), strength=0.6)
    ours = pipe.generate(request, noise=Noise(noise, init=eps))
    ref = _reference(StableDiffusionXLImg2ImgPipeline, tiny_sdxl_src, None, prompt="weathered blue wooden planks",
                     image=Image.fromarray(pixels), strength=0.6, num_inference_steps=6, guidance_scale=5.0)
    assert ref.std() > 0.05
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4


def _inpaint_request(pixels, mask, **kwargs) -> GenerateRequest:
    return GenerateRequest("white marble", steps=8, guidance=7.5, seed=0, tile="none", keep_unmasked=False,
                           init=InputImage.from_bytes(png_bytes(pixels), "init"),
                           mask=InputImage.from_bytes(png_bytes(mask), "mask"), **kwargs)


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_nine_channel_inpainting_matches_diffusers(tiny_inpaint, tiny_inpaint_src, strength):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = Pipeline.load(tiny_inpaint, provider="cpu")
    assert pipe.manifest["unet"]["in_channels"] == 9 and pipe.manifest["latent_channels"] == 4
    pixels, mask = _init_pixels(seed=3), _square_mask()
    shape = (1, 4, 32, 32)
    if strength == 1.0:  # from pure noise: diffusers encodes only the masked image
        noise, masked = _draws(2, shape)
        draws = Noise(noise, masked=masked)
    else:
        eps, noise, masked = _draws(3, shape)
        draws = Noise(noise, init=eps, masked=masked)
    ours = pipe.generate(_inpaint_request(pixels, mask, strength=strength), noise=draws)
    ref = _reference(StableDiffusionInpaintPipeline, tiny_inpaint_src, None, prompt="white marble",
                     image=Image.fromarray(pixels), mask_image=Image.fromarray(mask), strength=strength,
                     num_inference_steps=8, guidance_scale=7.5, height=64, width=64)
    assert ref.std() > 0.05
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4


def test_sdxl_nine_channel_inpainting_matches_diffusers(tiny_sdxl_inpaint, tiny_sdxl_inpaint_src):
    from diffusers import StableDiffusionXLInpaintPipeline

    pipe = Pipeline.load(tiny_sdxl_inpaint, provider="cpu")
    pixels, mask = _init_pixels(seed=6), _square_mask()
    noise, masked = _draws(2, (1, 4, 32, 32))
    request = GenerateRequest("weathered blue wooden planks", steps=6, guidance=5.0, seed=0, tile="none",
                              keep_unmasked=False, init=InputImage.from_bytes(png_bytes(pixels), "init"),
                              mask=InputImage.from_bytes(png_bytes(mask), "mask"), strength=1.0)
    ours = pipe.generate(request, noise=Noise(noise, masked=masked))
    ref = _reference(StableDiffusionXLInpaintPipeline, tiny_sdxl_inpaint_src, None,
                     prompt="weathered blue wooden planks", image=Image.fromarray(pixels),
                     mask_image=Image.fromarray(mask), strength=1.0, num_inference_steps=6, guidance_scale=5.0,
                     height=64, width=64)
    assert ref.std() > 0.05
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_four_channel_inpainting_matches_diffusers(sd, tiny_sd_src, strength):
    from diffusers import StableDiffusionInpaintPipeline

    pixels, mask = _init_pixels(seed=4), _square_mask()
    eps, noise, masked = _draws(3, (1, 4, 32, 32))  # diffusers encodes the init, then the masked init
    ours = sd.generate(_inpaint_request(pixels, mask, strength=strength, scheduler="ddim"),
                       noise=Noise(noise, init=eps, masked=masked))
    ref = _reference(StableDiffusionInpaintPipeline, tiny_sd_src, "ddim", prompt="white marble",
                     image=Image.fromarray(pixels), mask_image=Image.fromarray(mask), strength=strength,
                     num_inference_steps=8, guidance_scale=7.5, height=64, width=64)
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4
    # the blend keeps the known region close to the init (through the VAE round trip) ...
    outside = _square_mask() == 0
    kept = np.abs(ours.images[0] - pixels / 255.0)[outside].mean()
    inside = np.abs(ours.images[0] - pixels / 255.0)[~outside].mean()
    assert kept < inside


def test_lcm_img2img_matches_diffusers(tiny_lcm, tiny_lcm_src):
    """LCM's img2img pipeline draws its steps from the low-noise part of the schedule instead of cutting it."""
    from diffusers import LatentConsistencyModelImg2ImgPipeline

    pixels = _init_pixels(seed=5)
    eps, noise = _draws(2, (1, 4, 32, 32))
    pipe = Pipeline.load(tiny_lcm, provider="cpu")
    # one step: LCM injects no noise on its last step, so both sides stay deterministic
    request = GenerateRequest("green grass", steps=1, seed=0, tile="none", strength=0.5,
                              init=InputImage.from_bytes(png_bytes(pixels), "init"))
    ours = pipe.generate(request, noise=Noise(noise, init=eps))
    ref = _reference(LatentConsistencyModelImg2ImgPipeline, tiny_lcm_src, None, prompt="green grass",
                     image=Image.fromarray(pixels), strength=0.5, num_inference_steps=1,
                     guidance_scale=ours.request.guidance)
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4
