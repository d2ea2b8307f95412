"""No request can exhaust memory: sizes beyond what the machine holds are refused before anything runs,
with the estimate, the model's own size and the way to a larger texture; the CPU arena's limit stops what
the estimate misses. The estimate itself is checked against onnxruntime's measured peak."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from aigc_bridge.engine import Pipeline, memory
from aigc_bridge.errors import AigcError
from aigc_bridge.models import default_model_dir
from aigc_bridge.request import GenerateRequest

from .conftest import cli
from .sidecar import SidecarProcess


@pytest.fixture(scope="module")
def mini_dir() -> Path:
    return default_model_dir()


@pytest.fixture(scope="module")
def mini(mini_dir) -> Pipeline:
    return Pipeline.load(mini_dir, provider="cpu")


def _measured_unet_peak(model: Path, side: int, batch: int, scratch: Path) -> float:
    """onnxruntime's own arena peak for one UNet run (what the exporter's profile records, at any size)."""
    import onnxruntime as ort
    from aigc_bridge_export.memory_profile import _peak

    feeds = {"sample": np.zeros((batch, 4, side, side), np.float32), "timestep": np.ones(batch, np.float32),
             "encoder_hidden_states": np.zeros((batch, 16, 64), np.float32)}
    return _peak(ort, model / "unet.onnx", feeds, scratch)


def test_packages_carry_a_memory_profile(mini, tiny_sd):
    for manifest in (mini.manifest, json.loads((tiny_sd / "model.json").read_text())):
        graphs = manifest["memory"]["graphs"]
        assert {"unet.onnx", "vae_decoder.onnx"} <= set(graphs)
        unet = graphs["unet.onnx"]
        assert unet["latent_areas"] == sorted(unet["latent_areas"]) and len(unet["latent_areas"]) >= 3
        assert unet["peak_bytes"][-1] > unet["peak_bytes"][0]
        assert 1.5 < unet["batch2_ratio"] <= 2.05


@pytest.mark.parametrize(("side", "batch"), [(24, 2), (80, 1)])
def test_the_estimate_brackets_the_measured_peak(mini, mini_dir, tmp_path, side, batch):
    """Between the profiled sizes (24) and beyond them (80, extrapolated), with the safety margin applied."""
    profile = memory.GraphProfile.from_manifest(mini.manifest["memory"]["graphs"]["unet.onnx"])
    estimate = profile.peak(side * side, batch) * memory.SAFETY
    measured = _measured_unet_peak(mini_dir, side, batch, tmp_path)
    assert measured <= estimate <= 2.5 * measured, (estimate / 2**20, measured / 2**20)


def test_an_oversized_request_is_refused_before_it_runs(mini):
    started = time.perf_counter()
    with pytest.raises(AigcError) as info:
        mini.resolve(GenerateRequest("red brick wall", width=4096, height=4096))
    elapsed = time.perf_counter() - started
    exc = info.value
    assert (exc.code, exc.field) == ("insufficient_memory", "width")
    assert "needs about" in exc.message and "this machine can give" in exc.message
    assert "generates at 32 x 32" in exc.message and "--target-size 4096" in exc.message
    assert elapsed < 1.0  # read off the manifest, nothing ran


def test_count_is_named_when_fewer_images_would_fit(mini):
    request = GenerateRequest("red brick wall", width=192, height=192, count=16, guidance=5.0)
    one = mini.memory_estimate(mini.resolve(GenerateRequest("red brick wall", width=192, height=192)))
    budget = one.bytes * 3  # room for one image, not for sixteen
    limited = Pipeline.load(default_model_dir(), provider="cpu", memory_limit=int(budget))
    with pytest.raises(AigcError) as info:
        limited.resolve(request)
    assert info.value.field == "count" and "fewer images" in info.value.message


def test_a_large_texture_is_reached_by_resizing_the_native_image(tmp_path):
    """What the refusal tells a user to do works: 4096 px from texture-mini's 32 px, PBR maps included."""
    out = tmp_path / "wall.png"
    result = cli("generate", "red brick wall", "-o", str(out), "--seed", "1", "--target-size", "1024", "--pbr")
    assert result.returncode == 0, result.stderr
    from PIL import Image

    assert Image.open(out).size == (1024, 1024) and Image.open(tmp_path / "wall_normal.png").size == (1024, 1024)


def test_cli_refuses_with_the_estimate_and_writes_nothing(tmp_path):
    out = tmp_path / "huge.png"
    result = cli("generate", "red brick wall", "-o", str(out), "--width", "4096", "--height", "4096")
    assert result.returncode == 2
    assert "needs about" in result.stderr and "--target-size 4096" in result.stderr
    assert "(field: width)" in result.stderr
    assert not any(tmp_path.iterdir())


def test_the_sidecar_refuses_at_once_and_serves_the_next_request(tmp_path):
    server = SidecarProcess(tmp_path, None)  # no --model: the shipped texture-mini
    try:
        with server.client() as client:
            events = []
            with pytest.raises(AigcError) as info:
                client.generate("red brick wall", width=4096, height=4096, on_progress=events.append)
            assert info.value.code == "insufficient_memory" and "32 x 32" in info.value.message
            assert events == []  # refused before it was queued: no progress at all
            response = client.generate("red brick wall", seed=1, target_size=256)
            assert (response.images[0].width, response.images[0].height) == (256, 256)
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_the_arena_limit_stops_what_no_estimate_covers(mini_dir, tmp_path):
    """A package without a profile cannot be checked up front; the capped arena still turns the request
    into a clear error instead of growing until the machine swaps (its own process: the cap is global)."""
    copy = tmp_path / "no-profile"
    shutil.copytree(mini_dir, copy)
    manifest = json.loads((copy / "model.json").read_text())
    del manifest["memory"]
    (copy / "model.json").write_text(json.dumps(manifest))
    result = cli("generate", "red brick wall", "-o", str(tmp_path / "out.png"), "--model", str(copy),
                 "--width", "128", "--height", "128", "--steps", "1", "--memory-limit", "0.05")
    assert result.returncode == 2, result.stderr
    assert "ran out of memory" in result.stderr and "target_size" in result.stderr
    assert not (tmp_path / "out.png").exists()
