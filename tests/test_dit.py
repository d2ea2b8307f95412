"""SD 3 / 3.5 (MMDiT) and FLUX.1 (schnell-like, dev-like): export -> runtime -> image matches diffusers' own
StableDiffusion3Pipeline / FluxPipeline on the same initial latents (fp32, tiny random-weight configs), and the
errors a user of these families meets say what to change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.errors import InvalidRequest
from aigc_bridge.request import GenerateRequest

from .conftest import DIT_T5_LENGTH

PROMPT = "weathered red brick wall"


def _diffusers(src, latents: np.ndarray, **kwargs) -> np.ndarray:
    from diffusers import DiffusionPipeline

    extra = {"text_encoder_3": None, "tokenizer_3": None} if kwargs.pop("without_t5", False) else {}
    pipe = DiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    lat = torch.from_numpy(latents)
    if type(pipe).__name__ == "FluxPipeline":  # FLUX takes its latents packed: 2x2 patches as tokens
        b, c, h, w = latents.shape
        lat = pipe._pack_latents(lat, b, c, h, w)
    with torch.no_grad():
        return pipe(latents=lat, output_type="np", max_sequence_length=DIT_T5_LENGTH, height=64, width=64,
                    **kwargs).images


def _latents(pipe: Pipeline, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, pipe.manifest["latent_channels"], 32, 32),
                                                       dtype=np.float32)


@pytest.mark.parametrize("t5", [True, False])
def test_sd3_matches_diffusers(tiny_sd3, tiny_sd3_no_t5, tiny_sd3_src, t5):
    pipe = Pipeline.load(tiny_sd3 if t5 else tiny_sd3_no_t5, provider="cpu")
    m = pipe.manifest
    assert (m["family"], m["denoiser"], m["guidance_kind"], m["size_multiple"]) == ("sd3", "mmdit", "cfg", 4)
    assert [e["role"] for e in m["text_encoders"]] == (["clip_l", "clip_g", "t5"] if t5 else ["clip_l", "clip_g"])
    latents = _latents(pipe, 2, 3)
    ours = pipe.generate(GenerateRequest(PROMPT, negative_prompt="blurry", steps=4, guidance=5.0, count=2, seed=0,
                                         width=64, height=64), noise=Noise(latents))
    ref = _diffusers(tiny_sd3_src, latents, prompt=PROMPT, negative_prompt="blurry", num_inference_steps=4,
                     guidance_scale=5.0, num_images_per_prompt=2, without_t5=not t5)
    assert ref.std() > 0.05
    assert np.max(np.abs(np.stack(ours.images) - ref)) < 1e-4


def test_sd3_without_t5_differs_from_with_t5(tiny_sd3, tiny_sd3_no_t5):
    """Leaving T5 out changes the image (its tokens become zeros), as in diffusers: it is a real trade."""
    req = GenerateRequest(PROMPT, steps=2, guidance=5.0, seed=0)
    a = Pipeline.load(tiny_sd3, provider="cpu").generate(req).images[0]
    b = Pipeline.load(tiny_sd3_no_t5, provider="cpu").generate(req).images[0]
    assert np.mean(np.abs(a - b)) > 1e-4  # random weights: small, but 100x float noise


@pytest.mark.parametrize(("variant", "guidance"), [("schnell", None), ("dev", 3.5)])
def test_flux_matches_diffusers(tiny_flux_schnell, tiny_flux_schnell_src, tiny_flux_dev, tiny_flux_dev_src,
                                variant, guidance):
    path, src = (tiny_flux_dev, tiny_flux_dev_src) if variant == "dev" else (tiny_flux_schnell, tiny_flux_schnell_src)
    pipe = Pipeline.load(path, provider="cpu")
    m = pipe.manifest
    assert m["guidance_kind"] == ("embedded" if variant == "dev" else "none")
    assert m["distillation"] == ("none" if variant == "dev" else "turbo")
    latents = _latents(pipe, 2, 4)
    ours = pipe.generate(GenerateRequest(PROMPT, steps=4, guidance=guidance, count=2, seed=0, width=64, height=64),
                         noise=Noise(latents))
    ref = _diffusers(src, latents, prompt=PROMPT, num_inference_steps=4, num_images_per_prompt=2,
                     guidance_scale=guidance if guidance is not None else 0.0)
    assert ref.std() > 0.05
    assert np.max(np.abs(np.stack(ours.images) - ref)) < 1e-4


def test_flux_dev_guidance_changes_the_image(tiny_flux_dev):
    pipe = Pipeline.load(tiny_flux_dev, provider="cpu")
    a, b = (pipe.generate(GenerateRequest(PROMPT, steps=2, guidance=g, seed=1)).images[0] for g in (1.5, 6.0))
    assert np.mean(np.abs(a - b)) > 1e-3


# --- errors ------------------------------------------------------------------------------------------------

def test_guidance_on_schnell_is_refused(tiny_flux_schnell):
    pipe = Pipeline.load(tiny_flux_schnell, provider="cpu")
    with pytest.raises(InvalidRequest, match="schnell.*no guidance") as info:
        pipe.resolve(GenerateRequest(PROMPT, guidance=3.5))
    assert info.value.field == "guidance"
    assert pipe.resolve(GenerateRequest(PROMPT)).guidance == 0.0


def test_size_not_a_multiple_of_the_patch(tiny_sd3, tiny_flux_dev):
    for path in (tiny_sd3, tiny_flux_dev):
        pipe = Pipeline.load(path, provider="cpu")
        with pytest.raises(InvalidRequest, match=r"width 66 is not a multiple of 4.*2x2 latent patches.*64 or 68") \
                as info:
            pipe.resolve(GenerateRequest(PROMPT, width=66, height=64))
        assert info.value.field == "width"


def test_prompt_over_the_t5_limit_names_the_encoder_and_counts(tiny_sd3, tiny_flux_dev):
    long = " ".join(["weathered red brick wall"] * 40)
    for path in (tiny_sd3, tiny_flux_dev):
        pipe = Pipeline.load(path, provider="cpu")
        with pytest.raises(InvalidRequest, match=rf"prompt is \d+ tokens for the T5 text encoder, which reads at "
                                                 rf"most {DIT_T5_LENGTH}") as info:
            pipe.generate(GenerateRequest(long, steps=1, guidance=2.0))
        assert info.value.field == "prompt"


def test_prompt_over_clip_but_within_t5_is_a_note(tiny_sd3, tiny_sd3_no_t5):
    """CLIP reads 77 tokens, T5 more: a prompt between the two reaches T5 whole and the CLIP cut is a note; without
    T5, CLIP-L carries the prompt and the same text is an error."""
    pipe = Pipeline.load(tiny_sd3, provider="cpu")
    words = " ".join(["red brick wall"] * 30)
    clip_tokens, t5_tokens = pipe.parts._token_count("clip_l", words), pipe.parts._token_count("t5", words)
    assert clip_tokens > 77 and t5_tokens <= DIT_T5_LENGTH, (clip_tokens, t5_tokens)
    result = pipe.generate(GenerateRequest(words, steps=1, guidance=2.0, seed=0))
    assert any("CLIP-L" in w and "T5 reads all of it" for w in result.warnings), result.warnings
    with pytest.raises(InvalidRequest, match=rf"prompt is {clip_tokens} tokens for the CLIP-L text encoder"):
        Pipeline.load(tiny_sd3_no_t5, provider="cpu").generate(GenerateRequest(words, steps=1, guidance=2.0))


def test_unet_schedulers_are_refused_for_flow_models(tiny_sd3):
    pipe = Pipeline.load(tiny_sd3, provider="cpu")
    with pytest.raises(InvalidRequest, match="flow-matching model.*flow_euler") as info:
        pipe.resolve(GenerateRequest(PROMPT, scheduler="euler"))
    assert info.value.field == "scheduler"


def test_limits_are_advertised(tiny_sd3, tiny_flux_schnell, sd_pipeline):
    """list_models tells clients each model's size multiple, guidance kind, token limits and schedulers."""
    sd3 = Pipeline.load(tiny_sd3, provider="cpu").parts.limits()
    assert sd3 == {"family": "sd3", "size_multiple": 4, "guidance": "cfg",
                   "max_tokens": {"clip_l": 77, "clip_g": 77, "t5": DIT_T5_LENGTH}, "schedulers": ["flow_euler"]}
    assert Pipeline.load(tiny_flux_schnell, provider="cpu").parts.limits()["guidance"] == "none"
    assert sd_pipeline.parts.limits()["schedulers"][0] == "euler"
