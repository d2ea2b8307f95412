"""The single-file checkpoint families the exporter knows (stdlib only: the command line lists them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    pipeline: str                 # the diffusers pipeline class that loads it
    hub_config: str               # where diffusers' configs for it live on the hub
    prediction_type: str | None   # forced on the scheduler; None: the config's


FAMILIES = {f.name: f for f in (
    Family("sd1", "SD 1.x", "StableDiffusionPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5", None),
    Family("sd1-inpaint", "SD 1.x inpainting", "StableDiffusionInpaintPipeline",
           "stable-diffusion-v1-5/stable-diffusion-inpainting", None),
    Family("sd2", "SD 2.x (epsilon, 512 px base)", "StableDiffusionPipeline", "stabilityai/stable-diffusion-2-1-base",
           "epsilon"),
    Family("sd2-v", "SD 2.x v-prediction (768 px)", "StableDiffusionPipeline", "stabilityai/stable-diffusion-2-1",
           "v_prediction"),
    Family("sd2-inpaint", "SD 2.x inpainting", "StableDiffusionInpaintPipeline",
           "stabilityai/stable-diffusion-2-inpainting", None),
    Family("sdxl", "SDXL", "StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0", None),
    Family("sdxl-inpaint", "SDXL inpainting", "StableDiffusionXLInpaintPipeline",
           "diffusers/stable-diffusion-xl-1.0-inpainting-0.1", None),
)}
FAMILY_NAMES = tuple(FAMILIES)
