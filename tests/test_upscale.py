"""Upscalers: spandrel-detected .pth files -> ONNX packages (parity with torch), circular variants that roll
exactly, tiled inference that equals whole-image inference, the memory bound, and the `upscale` command.

The models are real spandrel architectures (ESRGAN's RRDBNet, Real-ESRGAN's compact SRVGGNet) with random
weights and few channels, saved as .pth files and read back through spandrel's own detection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aigc_bridge.assets.seams import seam_ratio
from aigc_bridge.errors import AigcError, InvalidRequest

from .conftest import cli

torch = pytest.importorskip("torch")


def _spandrel():
    from aigc_bridge_export.spandrel_import import import_spandrel

    return import_spandrel()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random-weight .pth files of two architectures spandrel detects (x4 ESRGAN, x2 compact)."""
    _spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    folder = tmp_path_factory.mktemp("sr-weights")
    torch.manual_seed(0)
    esrgan = ESRGAN(num_filters=8, num_blocks=1, scale=4)
    compact = Compact(num_feat=8, num_conv=2, upscale=2)
    paths = {"esrgan": folder / "esrgan-x4.pth", "compact": folder / "compact-x2.pth"}
    torch.save(esrgan.state_dict(), paths["esrgan"])
    torch.save(compact.state_dict(), paths["compact"])
    return paths


@pytest.fixture(scope="module")
def packages(weights, tmp_path_factory):
    """ESRGAN exported by the real command; the compact model through the function (with and without its
    circular variants)."""
    from aigc_bridge_export.upscaler_export import export_upscaler

    folder = tmp_path_factory.mktemp("sr-packages")
    run = cli("export", str(weights["esrgan"]), str(folder / "esrgan"))
    assert run.returncode == 0, run.stderr
    quiet = {"log": lambda _m: None}
    export_upscaler(weights["compact"], folder / "compact", **quiet)
    export_upscaler(weights["compact"], folder / "compact-plain", seamless=False, **quiet)
    return {"esrgan": folder / "esrgan", "compact": folder / "compact", "compact-plain": folder / "compact-plain"}


def _upscaler(path, **options):
    from aigc_bridge.upscale import Upscaler

    return Upscaler.load(path, provider="cpu", **options)


def _periodic(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth periodic test image (a few random Fourier modes), so tiles and rolls have structure to move."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    image = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(6):
            ky, kx = rng.integers(-4, 5, size=2)
            image[..., c] += rng.normal() * np.cos(2 * np.pi * (ky * y + kx * x) + rng.uniform(0, 6.3))
    return ((image - image.min()) / (image.max() - image.min())).astype(np.float32)


def test_export_matches_spandrels_torch_model(weights, packages):
    """The runtime (onnxruntime, no torch) against spandrel's own model on a new image, for both architectures."""
    for name, scale, arch in (("esrgan", 4, "ESRGAN"), ("compact", 2, "RealESRGAN Compact")):
        manifest = json.loads((packages[name] / "model.json").read_text())
        assert (manifest["format"], manifest["architecture"], manifest["scale"]) == ("aigc-bridge-upscaler", arch,
                                                                                      scale)
        assert set(manifest["graphs"]) == {"none", "both", "x"}
        weights_files = [p.name for p in packages[name].iterdir() if p.suffix == ".weights"]
        assert weights_files == ["upscaler.weights"]  # the three graphs share one weights file
        assert all(entry["max_abs_error"] < 1e-4 for entry in manifest["parity"].values())
        model = _spandrel().ModelLoader().load_from_file(str(weights[name])).model.eval()
        image = np.random.default_rng(3).random((20, 28, 3), dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(image.transpose(2, 0, 1))[None])[0].numpy().transpose(1, 2, 0)
        assert expected.std() > 0.02  # the weights make a real image, not a constant
        got = _upscaler(packages[name])(image)
        assert got.shape == (20 * scale, 28 * scale, 3)
        assert np.max(np.abs(got - np.clip(expected, 0, 1))) < 1e-4


def test_tile_variants_roll_with_the_input(packages):
    """Rolling a tileable input by k pixels rolls the output by scale x k: exactly (float rounding) with the
    circular graphs; to 1e-3 with wrapped context (the package without them), the method's reach."""
    image = _periodic(24, 32)
    for name, limit in (("esrgan", 1e-5), ("compact", 1e-5), ("compact-plain", 1e-3)):
        up = _upscaler(packages[name])
        s = up.scale
        for tile, shift in (("both", (5, 3)), ("x", (0, 7))):
            out = up(image, tile)
            rolled = up(np.roll(image, shift, axis=(0, 1)), tile)
            error = np.max(np.abs(np.roll(out, (shift[0] * s, shift[1] * s), axis=(0, 1)) - rolled))
            assert error < limit, (name, tile, error)
        plain = up(image, "none")
        assert np.max(np.abs(np.roll(plain, 3 * s, axis=1) - up(np.roll(image, 3, axis=1), "none"))) > 1e-3


def _border_ratio(image: np.ndarray, period: int, scale: int) -> float:
    """Mean |step| across the lines every ``period`` px (tile borders) over the mean |step| at the other lines of
    the same phase modulo ``scale`` (an upscaler's output has structure at its own scale, border or not)."""
    steps = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))
    border = np.arange(period - 1, len(steps), period)
    same_phase = np.setdiff1d(np.arange((period - 1) % scale, len(steps), scale), border)
    return float(steps[border].mean() / steps[same_phase].mean())


def test_tiled_inference_equals_whole_image(packages):
    image = _periodic(80, 96, seed=1)
    for tile in ("none", "both"):
        whole = _upscaler(packages["esrgan"])(image, tile)
        tiled_up = _upscaler(packages["esrgan"], tile_size=32)
        assert tiled_up.plan(80, 96) == 32
        tiled = tiled_up(image, tile)
        assert np.max(np.abs(tiled - whole)) < 1e-3, tile
        # no visible tile grid: the tile borders step exactly as much as the same lines of the whole image
        assert abs(_border_ratio(tiled, 32 * 4, 4) - _border_ratio(whole, 32 * 4, 4)) < 0.01


def test_memory_bound_tiles_or_refuses(packages):
    """The bound logic at small sizes: a 96 px image does not fit 4 MB in one piece; by default it is tiled
    (and equals the whole-image result), with tiling off it is refused with the advice to tile."""
    image = _periodic(96, 96, seed=2)
    up = _upscaler(packages["compact"], memory_limit=4 * 2**20)
    assert up.estimate_bytes(96, 96) > 4 * 2**20 // 2
    size = up.plan(96, 96)
    assert size is not None and size < 96
    whole = _upscaler(packages["compact"])(image, "both")
    assert np.max(np.abs(up(image, "both") - whole)) < 1e-3
    with pytest.raises(InvalidRequest, match="tile") as err:
        _upscaler(packages["compact"], memory_limit=4 * 2**20, tile_size=0)(image)
    assert err.value.field == "tile_size"
    with pytest.raises(InvalidRequest, match="memory-limit"):
        _upscaler(packages["compact"], memory_limit=2**20)(image)  # not even the result fits


def test_upscale_command_writes_a_full_size_pbr_set(packages, tmp_path):
    from PIL import Image

    from aigc_bridge.assets.writers import png_bytes

    source = tmp_path / "wall.png"
    source.write_bytes(png_bytes(_periodic(32, 32, seed=4)))
    (tmp_path / "wall.json").write_text(json.dumps({"outputs": {"tile": "both"}}))  # our own provenance
    out = tmp_path / "big" / "wall.png"
    run = cli("upscale", str(source), "--scale", "4", "--model", str(packages["esrgan"]), "-o", str(out), "--pbr")
    assert run.returncode == 0, run.stderr
    assert "tile both (wall.json)" in run.stdout
    for suffix in ("", "_normal", "_roughness", "_ao", "_orm", "_height"):
        assert Image.open(out.with_name(f"wall{suffix}.png")).size == (128, 128), suffix
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["outputs"]["upscaler"]["architecture"] == "ESRGAN"
    assert doc["outputs"]["processing"][0] == "upscaled 32x32 -> 128x128 (esrgan-x4, x4, tile=both)"
    normal = np.asarray(Image.open(out.with_name("wall_normal.png")), dtype=np.float32)
    assert seam_ratio(normal, 0) < 1.5 and seam_ratio(normal, 1) < 1.5  # maps derived at full size, tileable


def test_bad_input_is_named(packages, weights, tmp_path):
    from aigc_bridge.assets.writers import png_bytes

    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(_periodic(16, 16)))
    run = cli("upscale", str(source), "--scale", "2", "--model", str(packages["esrgan"]), "-o", str(tmp_path / "o.png"))
    assert run.returncode == 2 and "--scale 2: esrgan-x4 upscales x4 only" in run.stderr
    assert not (tmp_path / "o.png").exists()
    unknown = tmp_path / "mystery.pth"
    torch.save({"encoder.layer.weight": torch.zeros(4, 4), "head.bias": torch.zeros(4)}, unknown)
    run = cli("export", str(unknown), str(tmp_path / "mystery"))
    assert run.returncode == 2
    assert "spandrel" in run.stderr and "does not recognise this architecture" in run.stderr
    assert "UnsupportedModelError" in run.stderr  # what spandrel reported, by name
    assert not (tmp_path / "mystery").exists()
    run = cli("upscale", str(source), "--scale", "4", "--model", str(weights["esrgan"]), "-o", str(tmp_path / "o.png"))
    assert run.returncode == 2 and "export it once" in run.stderr
    with pytest.raises(AigcError, match="upscaler package"):
        from aigc_bridge.engine import Pipeline

        Pipeline.load(packages["esrgan"])
