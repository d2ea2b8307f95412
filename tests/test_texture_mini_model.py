"""The shipped default model, texture-mini: outputs that mean something, through the runtime and the sidecar."""

from __future__ import annotations

import os

import numpy as np
import pytest

from aigc_bridge.assets.seams import seam_ratio
from aigc_bridge.engine import Pipeline
from aigc_bridge.models import default_model_dir
from aigc_bridge.request import GenerateRequest

from .conftest import cli
from .sidecar import SidecarProcess

SEEDS = range(4)


@pytest.fixture(scope="module")
def mini() -> Pipeline:
    model = default_model_dir()
    assert model is not None, "texture-mini is shipped in aigc_bridge/models/texture-mini"
    return Pipeline.load(model, provider="cpu")


def _redness(images) -> float:
    """Mean of (red - blue) over the images: positive for red textures, negative for blue ones."""
    return float(np.mean([img[..., 0].mean() - img[..., 2].mean() for img in images]))


def test_red_prompts_give_redder_images_than_blue_prompts(mini):
    for material in ("brick wall", "wooden planks", "gravel"):
        red = [mini.generate(GenerateRequest(f"red {material}", seed=s)).images[0] for s in SEEDS]
        blue = [mini.generate(GenerateRequest(f"blue {material}", seed=s)).images[0] for s in SEEDS]
        assert _redness(red) > _redness(blue) + 0.1, material


def _mean_seam(mini, tile: str | None) -> float:
    """Mean seam ratio over 8 images x 2 axes: one image's ratio is noisy (a grid line that happens to fall on
    the wrap scores high without any seam; the evaluation's real-data row shows the spread), the mean is not."""
    ratios = []
    for prompt in ("white marble", "orange gravel", "green grass", "red brick wall"):
        result = mini.generate(GenerateRequest(prompt, seed=3, count=2, tile=tile))
        ratios += [seam_ratio(image, axis) for image in result.images for axis in (0, 1)]
    return float(np.mean(ratios))


def test_default_outputs_tile_and_seeds_differ(mini):
    result = mini.generate(GenerateRequest("small white hexagon tiles", seed=3, count=2))
    assert result.request.tile == "both"  # the model's recommended tiling
    assert np.mean(np.abs(result.images[0] - result.images[1])) > 0.01
    seamless = _mean_seam(mini, None)
    assert seamless < 1.3
    assert _mean_seam(mini, "none") > 1.5 * seamless  # the control: without circular padding the seam shows


def test_generate_needs_no_model_option(tmp_path):
    out = tmp_path / "wall.png"
    proc = cli("generate", "red brick wall", "-o", str(out), "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "texture-mini" not in proc.stderr


def test_aigc_bridge_model_changes_the_default(tmp_path, tiny_sd):
    """A user's own model as the default: no --model on every command."""
    import json

    env = {**os.environ, "AIGC_BRIDGE_MODEL": str(tiny_sd)}
    proc = cli("generate", "red brick wall", "-o", str(tmp_path / "wall.png"), "--steps", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    mini = json.loads((default_model_dir() / "model.json").read_text())["model_id"]
    used = json.loads((tmp_path / "wall.json").read_text())["model_id"]
    assert used == json.loads((tiny_sd / "model.json").read_text())["model_id"] != mini


def test_the_wheel_carries_the_model(tmp_path):
    """Built and unpacked as pip would install it, away from the source tree, the package still finds its model."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(tmp_path), str(repo)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("aigc_bridge-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    shipped = {p.relative_to(default_model_dir()) for p in default_model_dir().rglob("*") if p.is_file()}
    installed = site / "aigc_bridge" / "models" / "texture-mini"
    assert {p.relative_to(installed) for p in installed.rglob("*") if p.is_file()} == shipped
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)

    found = run("-c", "from aigc_bridge.models import default_model_dir; print(default_model_dir())")
    assert found.stdout.strip() == str(installed), found.stderr  # the unpacked wheel's, not the source tree's
    generated = run("-m", "aigc_bridge.cli", "generate", "red brick wall", "-o", str(tmp_path / "wall.png"))
    assert generated.returncode == 0, generated.stderr
    assert (tmp_path / "wall.png").is_file()


def test_batch_uses_the_default_model(tmp_path):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('version = 1\n[[texture]]\nname = "red"\nprompt = "red brick wall"\nseed = 4\n'
                    '[[texture]]\nname = "blue"\nprompt = "blue brick wall"\nseed = 4\n')
    proc = cli("batch", str(jobs), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    red, blue = (np.asarray(Image.open(tmp_path / "out" / f"{n}.png"), dtype=np.float64) / 255 for n in ("red", "blue"))
    assert red.shape == (32, 32, 3) and _redness([red]) > _redness([blue]) + 0.1


def test_the_sidecar_serves_the_default_model(tmp_path, mini):
    server = SidecarProcess(tmp_path, None)
    try:
        with server.client(timeout=60) as client:
            red = client.generate("red brick wall", seed=2, count=2)
            blue = client.generate("blue brick wall", seed=2, count=2)
    finally:
        server.stop()
    assert red.images[0].model_id == "texture-mini"
    assert _redness([i.to_numpy() / 255.0 for i in red.images]) > _redness([i.to_numpy() / 255.0 for i in blue.images])


def test_the_128px_stage_is_sharp_tileable_and_keeps_the_colour(mini):
    """texture-mini's own upscaler (shipped inside its package) against Lanczos resampling of the same 32 px
    images: far more of real data's fine detail, the colour unchanged, no block pattern, still exactly periodic."""
    from aigc_bridge.assets.resize import resize
    from aigc_bridge.evaluation.colour import colour_name
    from aigc_bridge.evaluation.sharpness import block_ratio, sharpness_ratio
    from aigc_bridge.texture_data import Spec, render

    up = mini.upscaler
    assert up is not None and up.scale == 4
    cases = (("red brick wall", Spec("texture", "bricks", "red")), ("white hexagon tiles",
             Spec("texture", "hexagons", "white")), ("orange gravel", Spec("texture", "gravel", "orange")),
             ("blue checkerboard", Spec("texture", "checker", "blue")))
    small, stage, real = [], [], []
    rng = np.random.default_rng(0)
    for prompt, spec in cases:
        images = mini.generate(GenerateRequest(prompt, seed=5, count=2)).images
        small += images
        stage += [up(image, "both") for image in images]
        real += [render(spec, rng, 128) for _ in images]
    resampled = [np.clip(resize(image, 128, 128, "both"), 0, 1) for image in small]
    sharp_stage, sharp_resampled = sharpness_ratio(stage, real, 16), sharpness_ratio(resampled, real, 16)
    assert sharp_stage > 0.3 and sharp_stage > 4 * sharp_resampled, (sharp_stage, sharp_resampled)
    assert [colour_name(x) for x in stage] == [colour_name(x) for x in small]
    # No block pattern: the stage steps at the borders of its input pixels about as real data does there (these
    # materials' grid lines lie on them: 1.65), where a blocky stage (the first one shipped: 4.45) steps much more.
    # The wrap is such a border, so this is also what keeps its seam like the interior.
    assert block_ratio(stage, 4) < 1.3 * block_ratio(real, 4), (block_ratio(stage, 4), block_ratio(real, 4))
    # Tileable: exactly periodic
    rolled = up(np.roll(small[0], (7, 11), axis=(0, 1)), "both")
    assert np.max(np.abs(np.roll(stage[0], (28, 44), axis=(0, 1)) - rolled)) < 1e-5


def test_make_demo_writes_the_sharp_stage(tmp_path):
    out = tmp_path / "wall.png"
    proc = cli("generate", "weathered red brick wall", "-o", str(out), "--seed", "1", "--pbr", "--target-size", "256")
    assert proc.returncode == 0, proc.stderr
    import json

    notes = json.loads(out.with_suffix(".json").read_text())["outputs"]["processing"]
    assert notes[0] == "upscaled 32x32 -> 128x128 (texture-mini-sr, x4, tile=both)"
