"""Seamless VAE encoders: the exporter makes them from torch; packages without them gain them torch-free
(export/encoder_tiles.py), and the two ways give the same graph."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from aigc_bridge_export.encoder_tiles import add_encoder_tiles, circular_variant

from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.package import ModelPackage


def _run(path, image):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]


@pytest.mark.parametrize("mode", ["both", "x"])
def test_derived_encoder_equals_the_exported_one(tiny_sd, tmp_path, mode):
    manifest = json.loads((tiny_sd / "model.json").read_text())
    assert manifest["vae_encoder"]["graphs"][mode] == f"vae_encoder.tile_{mode}.onnx"
    plain = onnx.load(str(tiny_sd / "vae_encoder.onnx"), load_external_data=False)
    derived = tiny_sd / f"derived_{mode}.onnx"  # beside the weights it points into
    try:
        onnx.save(circular_variant(plain, mode, tiny_sd), str(derived))
        image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32)
        exported = _run(tiny_sd / f"vae_encoder.tile_{mode}.onnx", image)
        assert np.max(np.abs(_run(derived, image) - exported)) < 1e-5
        assert np.max(np.abs(_run(tiny_sd / "vae_encoder.onnx", image) - exported)) > 1e-2  # really changed
    finally:
        derived.unlink(missing_ok=True)


def test_a_package_without_them_gains_them(tiny_sd, tmp_path):
    package = shutil.copytree(tiny_sd, tmp_path / "old")
    manifest = json.loads((package / "model.json").read_text())
    for mode in ("both", "x"):  # as packages exported before the encoder had tile variants
        (package / manifest["vae_encoder"]["graphs"].pop(mode)).unlink()
        del manifest["files"][f"vae_encoder.tile_{mode}.onnx"]
    (package / "model.json").write_text(json.dumps(manifest))
    new = add_encoder_tiles(package, log=lambda _m: None)
    assert set(new["vae_encoder"]["graphs"]) == {"none", "both", "x"}
    assert new["parity"]["vae_encoder.tile_both.onnx"]["max_abs_error"] < 1e-4
    assert ModelPackage.load(package).manifest["package_hash"] == new["package_hash"]  # every file verifies
    assert Pipeline.load(package, provider="cpu").manifest["vae_encoder"]["graphs"]["x"] == "vae_encoder.tile_x.onnx"
