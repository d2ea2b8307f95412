"""Faithful to the source model on configurations the other parity tests do not use (same latents, fp32).

Each test builds the tiny SD / SDXL pipeline with a different scheduler or VAE config, exports it through the
real exporter and compares the runtime's image with diffusers' own pipeline: a scheduler config that leaves
keys to their defaults (as SD 2.1's does), the model's own scheduler as the default, DPM++ 2M with and without
Karras sigmas, and an SDXL VAE that standardises latents per channel.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.request import GenerateRequest
from tests.test_schedulers import diffusers_scheduler

_SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "num_train_timesteps": 1000}
# stabilityai/stable-diffusion-2-1's scheduler_config.json as published: no timestep_spacing (diffusers 0.8
# had none), so DDIM loads it as "leading" but records it as defaulted.
SD21_DDIM = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", **_SD_BETAS, "clip_sample": False,
             "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "trained_betas": None}
DETERMINISTIC = ("euler", "ddim", "pndm", "dpmpp_2m", "dpmpp_2m_karras")


def _variant(src: Path, out: Path, scheduler: dict | None = None, vae: dict | None = None) -> Path:
    """A copy of a diffusers folder with its scheduler config replaced and / or its VAE config extended."""
    if not out.exists():
        shutil.copytree(src, out)
        if scheduler is not None:  # the pipeline loads the class model_index.json names, with this config
            (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
            index = json.loads((out / "model_index.json").read_text())
            index["scheduler"] = ["diffusers", scheduler["_class_name"]]
            (out / "model_index.json").write_text(json.dumps(index))
        if vae is not None:
            path = out / "vae" / "config.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), **vae}))
    return out


def _export(src: Path) -> Path:
    from aigc_bridge_export.onnx_export import export_pipeline

    out = src.with_name(src.name + "-onnx")
    if not out.exists():
        export_pipeline(src, out, model_id=src.name, seamless=False, log=lambda _m: None)
    return out


def _reference(src: Path, latents: np.ndarray, scheduler: str | None = None, **kwargs) -> np.ndarray:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32)
    if scheduler is not None:  # what `--scheduler NAME` is defined to be: Class.from_config(model's config)
        pipe.scheduler = diffusers_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(latents=torch.from_numpy(latents), output_type="np", **kwargs).images


def _max_diff(ours, ref) -> float:
    return float(np.max(np.abs(np.stack(ours.images) - ref)))


@pytest.fixture(scope="module")
def sd21_like(tiny_sd_src, workdir):
    src = _variant(tiny_sd_src, workdir / "sd21-ddim-diffusers", scheduler=SD21_DDIM)
    return src, _export(src)


def test_the_exported_config_keeps_what_was_defaulted(sd21_like):
    config = json.loads((sd21_like[1] / "model.json").read_text())["scheduler"]["config"]
    assert config["timestep_spacing"] == "leading"  # what DDIM itself runs with ...
    assert "timestep_spacing" in config["_use_default_values"]  # ... recorded as never set by the author


@pytest.mark.parametrize("scheduler", DETERMINISTIC)
def test_scheduler_swap_equals_from_config(sd21_like, scheduler):
    """--scheduler NAME on a config with defaulted keys is diffusers' NameClass.from_config(config): Euler
    runs linspace (999..0), not DDIM's leading default (876..1)."""
    src, model = sd21_like
    latents = np.random.default_rng(11).standard_normal((1, 4, 32, 32), dtype=np.float32)
    ours = Pipeline.load(model, provider="cpu").generate(
        GenerateRequest("old grey stone wall", steps=5, guidance=7.5, seed=0, scheduler=scheduler),
        noise=Noise(latents))
    ref = _reference(src, latents, scheduler, prompt="old grey stone wall", num_inference_steps=5,
                     guidance_scale=7.5)
    assert ref.std() > 0.05
    assert _max_diff(ours, ref) < 1e-4


OWN_SCHEDULERS = {
    "DDIMScheduler": ("ddim", {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}),
    "DPMSolverMultistepScheduler": ("dpmpp_2m", {}),
    "EulerDiscreteScheduler": ("euler", {"timestep_spacing": "trailing"}),
    "PNDMScheduler": ("pndm", {"skip_prk_steps": True, "steps_offset": 1}),
}


@pytest.mark.parametrize("class_name", list(OWN_SCHEDULERS))
def test_default_scheduler_is_the_models_own(tiny_sd_src, workdir, class_name):
    name, extra = OWN_SCHEDULERS[class_name]
    src = _variant(tiny_sd_src, workdir / f"own-{name}-diffusers",
                   scheduler={"_class_name": class_name, **_SD_BETAS, **extra})
    pipe = Pipeline.load(_export(src), provider="cpu")
    assert pipe.manifest["scheduler"]["default"] == name
    latents = np.random.default_rng(12).standard_normal((1, 4, 32, 32), dtype=np.float32)
    ours = pipe.generate(GenerateRequest("red brick wall", steps=6, guidance=7.5, seed=0), noise=Noise(latents))
    assert ours.request.scheduler == name
    ref = _reference(src, latents, prompt="red brick wall", num_inference_steps=6, guidance_scale=7.5)
    assert _max_diff(ours, ref) < 1e-4


def test_dpmpp_2m_follows_the_config_and_karras_is_a_choice(tiny_sd_src, workdir):
    """A DPM++ config that asks for Karras sigmas gets them from dpmpp_2m; dpmpp_2m_karras forces them on a
    config that does not (checked against diffusers on both), and the two schedules really differ."""
    karras_src = _variant(tiny_sd_src, workdir / "own-dpm-karras-diffusers",
                          scheduler={"_class_name": "DPMSolverMultistepScheduler", **_SD_BETAS,
                                     "use_karras_sigmas": True})
    plain_src = _variant(tiny_sd_src, workdir / "own-dpmpp_2m-diffusers",
                         scheduler={"_class_name": "DPMSolverMultistepScheduler", **_SD_BETAS})
    latents = np.random.default_rng(13).standard_normal((1, 4, 32, 32), dtype=np.float32)
    images = {}
    for label, src, scheduler in (("config karras", karras_src, None), ("forced karras", plain_src,
                                                                          "dpmpp_2m_karras"),
                                  ("plain", plain_src, None)):
        ours = Pipeline.load(_export(src), provider="cpu").generate(
            GenerateRequest("blue marble", steps=6, guidance=7.5, seed=0, scheduler=scheduler), noise=Noise(latents))
        ref = _reference(src, latents, scheduler, prompt="blue marble", num_inference_steps=6, guidance_scale=7.5)
        assert _max_diff(ours, ref) < 1e-4, label
        images[label] = ours.images[0]
    assert np.abs(images["config karras"] - images["forced karras"]).max() < 1e-4
    assert np.abs(images["plain"] - images["forced karras"]).max() > 1e-2


def test_sdxl_vae_with_latents_mean_and_std(tiny_sdxl_src, workdir):
    stats = {"latents_mean": [0.3, -0.2, 0.1, 0.4], "latents_std": [0.5, 0.8, 1.3, 0.9]}
    src = _variant(tiny_sdxl_src, workdir / "sdxl-latent-stats-diffusers", vae=stats)
    pipe = Pipeline.load(_export(src), provider="cpu")
    assert pipe.manifest["vae_latents_mean"] == stats["latents_mean"]
    latents = np.random.default_rng(14).standard_normal((1, 4, 32, 32), dtype=np.float32)
    request = GenerateRequest("weathered blue wooden planks", steps=4, guidance=5.0, seed=0)
    ours = pipe.generate(request, noise=Noise(latents))
    ref = _reference(src, latents, prompt="weathered blue wooden planks", num_inference_steps=4, guidance_scale=5.0)
    assert _max_diff(ours, ref) < 1e-4
    plain = Pipeline.load(_export(tiny_sdxl_src), provider="cpu").generate(request, noise=Noise(latents))
    assert np.abs(plain.images[0] - ours.images[0]).max() > 1e-2  # the statistics change the image


def test_truncation_is_reported_once_in_words(tiny_sdxl):
    """SDXL's two tokenizers both cut a long prompt: one note, quoting the lost words as typed."""
    prompt = "red brick wall, " * 20 + "Old Grey Stone with moss"
    result = Pipeline.load(tiny_sdxl, provider="cpu").generate(GenerateRequest(prompt, steps=1, seed=0))
    assert len(result.warnings) == 1
    note = result.warnings[0]
    assert note.startswith("prompt truncated to the text encoder's 77 tokens")
    assert note.endswith(' Old Grey Stone with moss"')
    assert "</w>" not in note and "characters" not in note
