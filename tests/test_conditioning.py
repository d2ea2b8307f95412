"""Image to image, inpainting and `seamless` with the shipped texture-mini, through the runtime and the command
line: what a user would notice (colour follows the prompt with strength, pixels outside a mask are the input's
bytes, a non-tiling image wraps afterwards), and bad input named by field and limit."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from aigc_bridge.assets.seams import seam_ratio
from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.engine.inputs import default_size
from aigc_bridge.errors import InvalidRequest
from aigc_bridge.input_image import InputImage
from aigc_bridge.models import default_model_dir
from aigc_bridge.request import GenerateRequest
from aigc_bridge.seamless import make_seamless

from .conftest import cli, png_bytes

PROMPTS = (("red brick wall", 1), ("grey stone floor", 2), ("green moss", 3))


@pytest.fixture(scope="module")
def mini() -> Pipeline:
    return Pipeline.load(default_model_dir(), provider="cpu")


@pytest.fixture(scope="module")
def red_brick(mini) -> np.ndarray:
    return mini.generate(GenerateRequest("red brick wall", seed=1)).image_uint8(0)


def _image(pixels: np.ndarray, name: str = "init") -> InputImage:
    return InputImage.from_bytes(png_bytes(pixels), name)


def _blueness(image: np.ndarray) -> float:
    return float((image[..., 2] - image[..., 0]).mean())


def test_strength_is_how_far_the_prompt_moves_the_init(mini, red_brick):
    init = _image(red_brick)
    blues = {s: np.mean([_blueness(mini.generate(GenerateRequest("blue brick wall", seed=seed, init=init,
                                                                 strength=s)).images[0]) for seed in range(3)])
             for s in (0.2, 0.7)}
    assert blues[0.7] > blues[0.2] + 0.3, blues
    assert blues[0.2] < 0  # still mostly the red init


def test_inpainted_square_changes_inside_and_keeps_every_byte_outside(mini, red_brick):
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    result = mini.generate(GenerateRequest("green moss", seed=3, init=_image(red_brick), mask=_image(mask, "mask")))
    out = result.image_uint8(0)
    assert np.array_equal(out[mask == 0], red_brick[mask == 0])
    assert np.abs(out.astype(int) - red_brick)[mask > 0].mean() > 10
    assert out[mask > 0][:, 1].mean() > red_brick[mask > 0][:, 1].mean()  # greener inside
    # without the paste-back the VAE round trip changes the outside too
    whole = mini.generate(GenerateRequest("green moss", seed=3, init=_image(red_brick), mask=_image(mask, "mask"),
                                          keep_unmasked=False)).image_uint8(0)
    assert not np.array_equal(whole[mask == 0], red_brick[mask == 0])


def test_a_blurred_mask_keeps_the_pixels_beyond_its_reach(mini, red_brick):
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[12:20, 12:20] = 255
    out = mini.generate(GenerateRequest("green moss", seed=4, init=_image(red_brick), mask=_image(mask, "mask"),
                                        mask_blur=2)).image_uint8(0)
    far = np.ones((32, 32), dtype=bool)
    far[4:28, 4:28] = False
    assert np.array_equal(out[far], red_brick[far])


def test_tiled_img2img_treats_the_init_as_periodic(mini, red_brick):
    """With --tile both (texture-mini's default) the whole chain commutes with circular shifts: rolling the init
    by (4, 8) px and the draws by (2, 4) latents (whole UNet-downsampling steps) rolls the result by (4, 8) px."""
    rng = np.random.default_rng(0)
    draws = [rng.standard_normal((1, 4, 16, 16), dtype=np.float32) for _ in range(2)]
    req = GenerateRequest("blue brick wall", seed=0, strength=0.6, tile="both", scheduler="euler",
                          init=_image(red_brick))
    a = mini.generate(req,
                      noise=Noise(draws[0], init=draws[1])).images[0]
    rolled = np.roll(red_brick, (4, 8), axis=(0, 1))
    b = mini.generate(dataclasses.replace(req, init=_image(rolled)),
                      noise=Noise(*(np.roll(d, (2, 4), axis=(2, 3)) for d in draws))).images[0]
    assert np.max(np.abs(np.roll(a, (4, 8), axis=(0, 1)) - b)) < 1e-4


def _non_tiling(mini) -> list[np.ndarray]:
    return [mini.generate(GenerateRequest(p, seed=s, tile="none")).images[0] for p, s in PROMPTS]


def test_seamless_brings_the_wrap_seam_to_the_level_of_generated_tiles(mini):
    tiles = [mini.generate(GenerateRequest(p, seed=s)).images[0] for p, s in PROMPTS]
    generated_level = np.mean([seam_ratio(t, a) for t in tiles for a in (0, 1)])
    before, after = [], []
    for (prompt, _), image in zip(PROMPTS, _non_tiling(mini)):
        result = make_seamless(mini, image, prompt=prompt, seed=5)
        keep = result.band == 0
        assert keep.mean() > 0.5
        assert np.array_equal(result.image[keep], image[keep])  # outside the band: the input, exactly
        before += [seam_ratio(image, a) for a in (0, 1)]
        after += [seam_ratio(result.image, a) for a in (0, 1)]
    assert np.mean(before) > 2.5 * generated_level, (before, generated_level)
    assert np.mean(after) < 1.3 * generated_level, (after, generated_level)


def test_seamless_command_at_another_resolution(mini, tmp_path):
    image = _non_tiling(mini)[1]
    big = np.asarray(Image.fromarray(np.round(image * 255).astype(np.uint8)).resize((96, 64), Image.LANCZOS))
    Image.fromarray(big).save(tmp_path / "photo.png")
    run = cli("seamless", str(tmp_path / "photo.png"), "-o", str(tmp_path / "tile.png"), "--prompt",
              "grey stone floor", "--seed", "5")
    assert run.returncode == 0, run.stderr
    assert "seam ratio" in run.stdout and "resampled to 96x64" in run.stderr
    out = np.asarray(Image.open(tmp_path / "tile.png").convert("RGB"))
    assert out.shape == big.shape
    assert seam_ratio(out / 255.0, 1) < 0.5 * seam_ratio(big / 255.0, 1)
    assert np.array_equal(out[20:44, 30:66], big[20:44, 30:66])  # the middle is outside the band


def test_cli_generate_from_an_init_says_how_it_resized_it(red_brick, tmp_path):
    Image.fromarray(red_brick).resize((96, 64)).save(tmp_path / "wide.png")
    run = cli("generate", "blue brick wall", "-o", str(tmp_path / "out.png"), "--init", str(tmp_path / "wide.png"),
              "--strength", "0.5", "--seed", "1")
    assert run.returncode == 0, run.stderr
    assert "init resized 96x64 -> 42x28, centre-cropped 2 x 0 px to 40x28" in run.stderr
    assert Image.open(tmp_path / "out.png").size == (40, 28)


def test_default_size_keeps_the_aspect_at_the_native_area():
    assert default_size(1024, 768, (512, 512), 64) == (576, 448)
    assert default_size(300, 300, (32, 32), 4) == (32, 32)
    assert default_size(1024, 512, (512, 512), 64, width=768) == (768, 384)


# --- bad input: the field and the limit -------------------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_a_huge_png_is_refused_from_its_header():
    with pytest.raises(InvalidRequest, match="init is 30000 x 30000 pixels; input images may be at most 8192") as e:
        InputImage.from_bytes(_png_header(30000, 30000) + b"\0" * 100, "init")
    assert e.value.field == "init"


@pytest.mark.parametrize("strength", [0, 0.0, 1.5, -0.1])
def test_strength_out_of_range(red_brick, strength):
    with pytest.raises(InvalidRequest, match="strength must be") as e:
        GenerateRequest("x", init=_image(red_brick), strength=strength)
    assert e.value.field == "strength"


def test_mask_of_another_size(red_brick):
    with pytest.raises(InvalidRequest, match="mask is 16 x 16 pixels; it must be the init's size, 32 x 32") as e:
        GenerateRequest("x", init=_image(red_brick), mask=_image(np.zeros((16, 16), np.uint8), "mask"))
    assert e.value.field == "mask"


def test_truncated_and_unreadable_images(mini, red_brick):
    data = png_bytes(red_brick)
    truncated = InputImage.from_bytes(data[: len(data) // 2], "init")  # the header is intact
    with pytest.raises(InvalidRequest, match="init is not a readable image") as e:
        mini.generate(GenerateRequest("x", init=truncated))
    assert e.value.field == "init"
    with pytest.raises(InvalidRequest, match="mask is not a PNG, JPEG or WebP image") as e:
        InputImage.from_bytes(b"GIF89a" + b"\0" * 40, "mask")
    assert e.value.field == "mask"


def test_too_few_steps_for_the_strength(mini, red_brick):
    with pytest.raises(InvalidRequest, match=r"steps x strength must be at least 1 \(3 x 0.3 runs no step\): "
                                             r"use steps 4 or more") as e:
        mini.resolve(GenerateRequest("x", init=_image(red_brick), steps=3, strength=0.3))
    assert e.value.field == "strength"


def test_turbo_error_says_so(red_brick, tmp_path):
    package = shutil.copytree(default_model_dir(), tmp_path / "turbo-mini")
    manifest = json.loads((package / "model.json").read_text())
    manifest["recommended"]["steps"] = 1  # as SD-Turbo's
    (package / "model.json").write_text(json.dumps({**manifest, "distillation": "turbo"}))
    turbo = Pipeline.load(package, provider="cpu")
    with pytest.raises(InvalidRequest, match=r"\(1 x 0.5 runs no step; a Turbo model samples in few steps, so give "
                                             r"more steps\): use steps 2 or more with strength 0.5") as e:
        turbo.resolve(GenerateRequest("x", init=_image(red_brick), steps=1, strength=0.5))
    assert e.value.field == "strength"
    # left to its default, the step count is raised to the fewest that run one (Turbo's 1 -> 2 at 0.5)
    assert turbo.resolve(GenerateRequest("x", init=_image(red_brick), strength=0.5)).steps == 2
