"""Phase 3: the trained parts become a diffusers StableDiffusionPipeline folder, then our model package
(exported and parity-checked by the one exporter every model goes through)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from .config import TrainConfig
from .models import scheduler_config

MODEL_ID = "texture-mini"
DIFFUSERS_DIR = "diffusers"
MAX_PACKAGE_BYTES = 20 * 1024 * 1024  # with the 128 px stage; the Blender extension bundles it (issues 16, 18)


def save_pipeline(config: TrainConfig, vae, text_encoder, tokenizer, unet, out: Path) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae.cpu(), text_encoder=text_encoder.cpu(), tokenizer=tokenizer,
                                   unet=unet.cpu(), scheduler=EulerDiscreteScheduler(**scheduler_config(config)),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    target = out / DIFFUSERS_DIR
    if target.exists():
        shutil.rmtree(target)
    pipe.save_pretrained(target)
    return target


def export_package(config: TrainConfig, diffusers_dir: Path, package_dir: Path,
                   log: Callable[[str], None] = print) -> Path:
    """The ONNX package (tile none / both / x graphs share weights); refuses to exceed 20 MB."""
    from aigc_bridge_export.onnx_export import export_pipeline

    recommended = {"steps": config.sample_steps, "guidance": config.sample_guidance, "scheduler": "euler",
                   "tile": "both"}
    export_pipeline(diffusers_dir, package_dir, model_id=MODEL_ID, overwrite=True, recommended=recommended,
                    log=log)
    check_size(package_dir, log)
    return package_dir


def check_size(package_dir: Path, log: Callable[[str], None] = print) -> int:
    size = sum(p.stat().st_size for p in package_dir.rglob("*") if p.is_file())
    if size > MAX_PACKAGE_BYTES:
        raise RuntimeError(f"{package_dir} is {size / 2**20:.1f} MB, over the {MAX_PACKAGE_BYTES // 2**20} MB budget")
    log(f"package: {package_dir} ({size / 2**20:.1f} MB)")
    return size
