"""Shared fixtures: tiny diffusers pipelines built from configs and exported once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _built(workdir: Path, name: str, build, **kwargs) -> Path:
    src = workdir / f"{name}-diffusers"
    if not src.exists():
        build(src, **kwargs)
    return src


def _exported(workdir: Path, name: str, src: Path, **options) -> Path:
    from aigc_bridge_export.onnx_export import export_pipeline

    out = workdir / f"{name}-onnx"
    if not out.exists():
        export_pipeline(src, out, model_id=name, log=lambda _msg: None, **options)
    return out


@pytest.fixture(scope="session")
def tiny_sd_src(workdir) -> Path:
    from aigc_bridge_export.tiny import build_tiny_sd

    return _built(workdir, "tiny-sd", build_tiny_sd)


@pytest.fixture(scope="session")
def tiny_sd(workdir, tiny_sd_src) -> Path:
    return _exported(workdir, "tiny-sd", tiny_sd_src)


@pytest.fixture(scope="session")
def tiny_sdxl_src(workdir) -> Path:
    from aigc_bridge_export.tiny import build_tiny_sdxl

    return _built(workdir, "tiny-sdxl", build_tiny_sdxl)


@pytest.fixture(scope="session")
def tiny_sdxl(workdir, tiny_sdxl_src) -> Path:
    return _exported(workdir, "tiny-sdxl", tiny_sdxl_src)


@pytest.fixture(scope="session")
def tiny_lcm_src(workdir) -> Path:
    from aigc_bridge_export.tiny import build_tiny_sd

    return _built(workdir, "tiny-lcm", build_tiny_sd, lcm=True)


@pytest.fixture(scope="session")
def tiny_lcm(workdir, tiny_lcm_src) -> Path:
    return _exported(workdir, "tiny-lcm", tiny_lcm_src)


# Single-file checkpoints in the original trainers' layout (export/original_layout.py), each written from a tiny
# diffusers folder that doubles as its --config.
def _single_file(workdir: Path, name: str, src: Path, suffix: str) -> Path:
    from aigc_bridge_export.original_layout import save_single_file

    path = workdir / f"{name}{suffix}"
    if not path.exists():
        save_single_file(src, path)
    return path


@pytest.fixture(scope="session")
def tiny_sd_file(workdir, tiny_sd_src) -> Path:
    return _single_file(workdir, "tiny-sd1", tiny_sd_src, ".safetensors")


@pytest.fixture(scope="session")
def tiny_sd2v_src(workdir) -> Path:
    from aigc_bridge_export.tiny import build_tiny_sd

    return _built(workdir, "tiny-sd2v", build_tiny_sd, sd2=True, prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_sd2v_file(workdir, tiny_sd2v_src) -> Path:
    return _single_file(workdir, "tiny-sd2v", tiny_sd2v_src, ".ckpt")  # as Lightning saved SD 2.x


@pytest.fixture(scope="session")
def tiny_sdxl_file_src(workdir) -> Path:
    from aigc_bridge_export.tiny import build_tiny_sdxl

    # text encoders of two widths, as in SDXL (768 / 1280): the conversion tells them apart by width
    return _built(workdir, "tiny-sdxl-w48", build_tiny_sdxl, text_width_2=48)


@pytest.fixture(scope="session")
def tiny_sdxl_file(workdir, tiny_sdxl_file_src) -> Path:
    return _single_file(workdir, "tiny-sdxl", tiny_sdxl_file_src, ".safetensors")


@pytest.fixture(scope="session")
def tiny_inpaint_src(workdir) -> Path:
    from aigc_bridge_export.tiny import build_tiny_sd

    return _built(workdir, "tiny-inpaint", build_tiny_sd, inpaint=True)


@pytest.fixture(scope="session")
def tiny_inpaint_file(workdir, tiny_inpaint_src) -> Path:
    return _single_file(workdir, "tiny-sd1-inpainting", tiny_inpaint_src, ".safetensors")


# Transformer (DiT) families: T5 reads 96 tokens in the tiny packages (the real default is 256 / 512), more than
# CLIP's 77 as in the real models.
DIT_T5_LENGTH = 96


@pytest.fixture(scope="session")
def tiny_sd3_src(workdir) -> Path:
    from aigc_bridge_export.tiny import build_tiny_sd3

    return _built(workdir, "tiny-sd3", build_tiny_sd3)


@pytest.fixture(scope="session")
def tiny_sd3(workdir, tiny_sd3_src) -> Path:
    return _exported(workdir, "tiny-sd3", tiny_sd3_src, t5_max_length=DIT_T5_LENGTH)


@pytest.fixture(scope="session")
def tiny_sd3_no_t5(workdir, tiny_sd3_src) -> Path:
    """The same model exported without its T5 encoder (--no-t5)."""
    return _exported(workdir, "tiny-sd3-no-t5", tiny_sd3_src, t5=False, t5_max_length=DIT_T5_LENGTH)


@pytest.fixture(scope="session")
def tiny_flux_dev_src(workdir) -> Path:
    from aigc_bridge_export.tiny import build_tiny_flux

    return _built(workdir, "tiny-flux-dev", build_tiny_flux, dev=True)


@pytest.fixture(scope="session")
def tiny_flux_dev(workdir, tiny_flux_dev_src) -> Path:
    return _exported(workdir, "tiny-flux-dev", tiny_flux_dev_src, t5_max_length=DIT_T5_LENGTH)


@pytest.fixture(scope="session")
def tiny_flux_schnell_src(workdir) -> Path:
    from aigc_bridge_export.tiny import build_tiny_flux

    return _built(workdir, "tiny-flux-schnell", build_tiny_flux, dev=False)


@pytest.fixture(scope="session")
def tiny_flux_schnell(workdir, tiny_flux_schnell_src) -> Path:
    return _exported(workdir, "tiny-flux-schnell", tiny_flux_schnell_src, t5_max_length=DIT_T5_LENGTH)


@pytest.fixture(scope="session")
def sd_pipeline(tiny_sd):
    from aigc_bridge.engine import Pipeline

    return Pipeline.load(tiny_sd, provider="cpu")


def cli(*args: str, **kwargs):
    """Run the real `aigc-bridge` command in a subprocess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "aigc_bridge.cli", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


@pytest.fixture(scope="session")
def tiny_inpaint(workdir, tiny_inpaint_src) -> Path:
    return _exported(workdir, "tiny-inpaint", tiny_inpaint_src)


def png_bytes(pixels) -> bytes:
    """uint8 H x W (x 3) -> PNG bytes, for input images."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_sdxl_inpaint_src(workdir) -> Path:
    from aigc_bridge_export.tiny import build_tiny_sdxl

    return _built(workdir, "tiny-sdxl-inpaint", build_tiny_sdxl, inpaint=True)


@pytest.fixture(scope="session")
def tiny_sdxl_inpaint(workdir, tiny_sdxl_inpaint_src) -> Path:
    return _exported(workdir, "tiny-sdxl-inpaint", tiny_sdxl_inpaint_src)
