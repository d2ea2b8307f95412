"""Bad input gives a clear error that names the field (or file), never a raw onnxruntime traceback."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.package import ModelPackage
from aigc_bridge.errors import AigcError, InvalidRequest, ModelPackageError
from aigc_bridge.request import GenerateRequest

from .conftest import cli


@pytest.fixture
def package_copy(tiny_sd, tmp_path):
    return shutil.copytree(tiny_sd, tmp_path / "pkg")


def test_missing_file_is_named(package_copy):
    (package_copy / "unet.weights").unlink()
    with pytest.raises(ModelPackageError, match="unet.weights is missing") as info:
        ModelPackage.load(package_copy)
    assert info.value.field == "unet.weights"


def test_corrupt_file_is_named(package_copy):
    with open(package_copy / "vae_decoder.weights", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ModelPackageError, match="vae_decoder.weights is corrupt"):
        ModelPackage.load(package_copy)


def test_missing_manifest_and_folder(tmp_path):
    with pytest.raises(ModelPackageError, match="not an aigc-bridge model package"):
        ModelPackage.load(tmp_path)
    with pytest.raises(ModelPackageError, match="does not exist"):
        ModelPackage.load(tmp_path / "nope")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("family", "sd4", "unknown model family 'sd4'"),
    ("format_version", 99, "newer than this aigc-bridge"),
    ("prediction_type", "x0-flow", "unknown prediction_type"),
])
def test_bad_manifest_fields(package_copy, key, value, message):
    path = package_copy / "model.json"
    manifest = json.loads(path.read_text())
    manifest[key] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match=message) as info:
        ModelPackage.load(package_copy)
    assert info.value.field == key


@pytest.mark.parametrize(("fields", "field"), [
    ({"width": 0}, "width"), ({"width": -64}, "width"), ({"height": 1_000_000}, "height"),
    ({"steps": 0}, "steps"), ({"steps": 10_000}, "steps"), ({"count": 0}, "count"),
    ({"guidance": float("nan")}, "guidance"), ({"seed": -1}, "seed"), ({"tile": "y"}, "tile"),
    ({"scheduler": "heun"}, "scheduler"), ({"width": "64"}, "width"), ({"prompt": None}, "prompt"),
])
def test_request_limits_name_the_field(fields, field):
    with pytest.raises(InvalidRequest) as info:
        GenerateRequest(**{"prompt": "x", **fields})
    assert info.value.field == field


def test_size_the_model_cannot_take(sd_pipeline):
    with pytest.raises(InvalidRequest, match="not a multiple of 4.*try 64 or 68") as info:
        sd_pipeline.generate(GenerateRequest("x", width=66, steps=1))
    assert info.value.field == "width"


def test_long_prompt_is_truncated_with_a_warning(sd_pipeline):
    result = sd_pipeline.generate(GenerateRequest("red brick wall " * 700, steps=1, seed=0))
    assert len("red brick wall " * 700) > 10_000
    assert [w for w in result.warnings if "truncated" in w] == result.warnings[:1]
    assert result.images[0].shape == (64, 64, 3)
    text = " ".join(f"word{i}" for i in range(100))
    dropped = sd_pipeline._tokenizers[0](text).dropped
    assert text.endswith(" " + dropped) and len(dropped.split()) >= 25  # whole words, as typed


def test_unavailable_provider(tiny_sd):
    with pytest.raises(InvalidRequest, match="not available") as info:
        Pipeline.load(tiny_sd, provider="cuda")
    assert info.value.field == "provider"


def test_graph_onnxruntime_cannot_load_is_reported_not_raised(package_copy):
    (package_copy / "text_encoder.onnx").write_bytes(b"not a graph")
    with pytest.raises(AigcError, match="cannot load text_encoder.onnx"):
        Pipeline(ModelPackage.load(package_copy, verify=False), provider="cpu")


def test_cli_errors_are_one_line_without_traceback(tiny_sd, tmp_path):
    out = tmp_path / "o.png"
    no_default = {**os.environ, "AIGC_BRIDGE_MODEL": "none"}
    wrong_default = {**os.environ, "AIGC_BRIDGE_MODEL": str(tmp_path)}
    for args, env, needle in [
        (["generate", "x", "-o", str(out)], no_default, "--model DIR"),
        (["generate", "x", "-o", str(out)], wrong_default, f"AIGC_BRIDGE_MODEL={tmp_path} is not a model package"),
        (["serve", "--bind", "tcp://127.0.0.1:0"], wrong_default, "AIGC_BRIDGE_MODEL="),
        (["generate", "x", "-o", str(out), "--model", str(tiny_sd), "--steps", "0"], None, "steps must be between"),
        (["generate", "x", "-o", str(out), "--model", str(tiny_sd), "--width", "66"], None, "multiple of 4"),
        (["generate", "x", "-o", str(out), "--model", str(tmp_path / "none")], None, "does not exist"),
    ]:
        proc = cli(*args, env=env)
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
