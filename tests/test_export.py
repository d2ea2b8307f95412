"""The exported package: self-describing, verified, seamless variants without duplicated weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aigc_bridge.engine.package import ModelPackage, package_hash, sha256_file


def test_manifest_describes_the_sd_package(tiny_sd):
    m = json.loads((tiny_sd / "model.json").read_text())
    assert (m["family"], m["distillation"], m["precision"], m["opset"]) == ("sd", "none", "fp32", 17)
    assert (m["latent_channels"], m["vae_scale_factor"], m["size_multiple"]) == (4, 2, 4)
    assert m["native_size"] == [64, 64] and m["prediction_type"] == "epsilon"
    assert m["scheduler"]["config"]["timestep_spacing"] == "leading"
    assert m["text_encoders"][0]["pad_token_id"] == 1  # SD 1.x pads with the end token
    for name, digest in m["files"].items():
        assert sha256_file(tiny_sd / name) == digest
    assert m["package_hash"] == package_hash(m["files"])
    assert set(m["unet"]["graphs"]) == {"none", "both", "x"} and "vae_encoder" in m


def test_sdxl_package_has_two_encoders_and_bang_padding(tiny_sdxl):
    m = ModelPackage.load(tiny_sdxl).manifest
    first, second = m["text_encoders"]
    assert not first["pooled"] and second["pooled"] and m["unet"]["text_time"]
    assert second["pad_token_id"] != first["pad_token_id"]  # "!" padding, read from tokenizer_2's config


def test_seamless_variants_share_one_weights_file(tiny_sd):
    weights = sorted(p.name for p in tiny_sd.glob("*.weights"))
    assert weights == ["text_encoder.weights", "unet.weights", "vae_decoder.weights", "vae_encoder.weights"]
    unet_params = 1_427_012  # tiny UNet, 4 bytes each
    assert (tiny_sd / "unet.weights").stat().st_size < unet_params * 4 * 1.1
    for graph in ("unet.tile_both.onnx", "unet.tile_x.onnx"):
        assert (tiny_sd / graph).stat().st_size < 2_000_000


def test_a_graph_that_fails_parity_is_refused(tmp_path):
    from aigc_bridge_export.onnx_export import ExportError, _Graph, export_graphs

    class ShapeDependent(torch.nn.Module):  # traced at one shape, wrong at another: a real export fault
        def forward(self, x):
            return x * 2 if x.shape[-1] == 4 else x

    graph = _Graph("bad", ShapeDependent(), lambda seed, b, h, w: (torch.ones(b, 1, h, w),), ["x"], ["y"],
                   {"x": {0: "b", 2: "h", 3: "w"}}, (1, 4, 4), (2, 6, 8))
    with pytest.raises(ExportError, match="parity check failed for bad.onnx"):
        export_graphs([graph], tmp_path, fp16=False, optimize="none", log=lambda _m: None)


def test_export_cli_and_bad_source(tiny_sd_src, tmp_path):
    from .conftest import cli

    proc = cli("export", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert proc.returncode == 2 and "could not load a diffusers pipeline" in proc.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    proc = cli("export", str(tiny_sd_src), str(tmp_path / "pkg"), "--distillation", "turbo")
    assert proc.returncode == 0, proc.stderr
    m = ModelPackage.load(tmp_path / "pkg").manifest
    assert m["distillation"] == "turbo" and m["recommended"] == {"steps": 1, "guidance": 0.0}
    assert m["scheduler"]["config"]["timestep_spacing"] == "trailing"


def test_fp16_export_runs_close_to_fp32(tiny_sd_src, tiny_sd, tmp_path):
    from aigc_bridge_export.onnx_export import export_pipeline

    from aigc_bridge.engine import Pipeline
    from aigc_bridge.request import GenerateRequest

    out = export_pipeline(tiny_sd_src, tmp_path / "fp16", fp16=True, log=lambda _m: None)
    assert json.loads((out / "model.json").read_text())["precision"] == "fp16"
    assert (out / "unet.weights").stat().st_size < (tiny_sd / "unet.weights").stat().st_size * 0.6
    req = GenerateRequest("red brick wall", steps=4, seed=3)
    a = Pipeline.load(out, provider="cpu").generate(req).images[0]
    b = Pipeline.load(tiny_sd, provider="cpu").generate(req).images[0]
    assert np.max(np.abs(a - b)) < 0.05
