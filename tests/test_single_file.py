"""Single-file checkpoints (original SD / SGM key layout) -> package -> runtime, against diffusers' own
``from_single_file`` pipeline on the same latents; the family read from the tensors; clear refusals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from aigc_bridge_export.errors import ExportError

from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.engine.package import sha256_file
from aigc_bridge.request import GenerateRequest

from .conftest import cli


def _export(source, out, **kwargs):
    from aigc_bridge_export.onnx_export import export_pipeline

    return export_pipeline(source, out, seamless=False, log=lambda _m: None, **kwargs)


def _reference(cls_name: str, path, config):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_single_file(str(path), config=str(config), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_matches_from_single_file(package, cls_name: str, path, config, prompt: str, negative: str,
                                     guidance: float, count: int = 1, seed: int = 3) -> None:
    """Our runtime on the package against diffusers' from_single_file pipeline on the same latents."""
    latents = np.random.default_rng(seed).standard_normal((count, 4, 32, 32), dtype=np.float32)
    ours = Pipeline.load(package, provider="cpu").generate(
        GenerateRequest(prompt, negative_prompt=negative, steps=4, guidance=guidance, count=count, seed=0),
        noise=Noise(latents))
    with torch.no_grad():
        ref = _reference(cls_name, path, config)(
            prompt=prompt, negative_prompt=negative or None, num_images_per_prompt=count, num_inference_steps=4,
            guidance_scale=guidance, latents=torch.from_numpy(latents), output_type="np").images
    assert ref.std() > 0.05  # a real image, not a constant
    assert np.max(np.abs(np.stack(ours.images) - ref)) < 1e-4


def test_the_fixtures_are_in_the_original_layout_and_convert_exactly(tiny_sd_file, tiny_sd_src, tiny_sdxl_file,
                                                                      tiny_sdxl_file_src):
    """The tiny files carry the trainers' key names, and diffusers' converter gives back every weight."""
    from diffusers import DiffusionPipeline
    from safetensors import safe_open

    with safe_open(str(tiny_sd_file), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "first_stage_model.decoder.up.1.block.0.conv1.weight" in keys
    assert "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert not any(k.startswith(("unet.", "down_blocks.", "text_encoder.")) for k in keys)
    with safe_open(str(tiny_sdxl_file), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    for path, src, cls in ((tiny_sd_file, tiny_sd_src, "StableDiffusionPipeline"),
                           (tiny_sdxl_file, tiny_sdxl_file_src, "StableDiffusionXLPipeline")):
        original, converted = DiffusionPipeline.from_pretrained(src), _reference(cls, path, src)
        for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if getattr(original, part, None) is None:
                continue
            a, b = getattr(original, part).state_dict(), getattr(converted, part).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_sd1_safetensors_exports_and_matches_from_single_file(tiny_sd_file, tiny_sd_src, tmp_path):
    out = tmp_path / "pkg"
    proc = cli("export", str(tiny_sd_file), str(out), "--config", str(tiny_sd_src), "--no-seamless")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "model.json").read_text())
    assert m["model_id"] == "tiny-sd1" and m["family"] == "sd" and m["loras"] == [] and m["embeddings"] == []
    assert m["source_file"] == {"name": "tiny-sd1.safetensors", "sha256": sha256_file(tiny_sd_file),
                                "bytes": tiny_sd_file.stat().st_size, "format": "safetensors", "family": "sd1",
                                "config": str(tiny_sd_src)}
    _assert_matches_from_single_file(out, "StableDiffusionPipeline", tiny_sd_file, tiny_sd_src, "red brick wall",
                                     "blurry", 7.5, count=2)


def test_sd2_v_prediction_ckpt_matches_from_single_file(tiny_sd2v_file, tiny_sd2v_src, tmp_path):
    out = _export(tiny_sd2v_file, tmp_path / "pkg", config=str(tiny_sd2v_src))
    m = json.loads((out / "model.json").read_text())
    assert m["prediction_type"] == "v_prediction" and m["source_file"]["family"] == "sd2-v"
    assert m["source_file"]["format"] == "pickle (weights-only)"
    assert m["text_encoders"][0]["pad_token_id"] != 1  # SD 2.x pads with "!"
    _assert_matches_from_single_file(out, "StableDiffusionPipeline", tiny_sd2v_file, tiny_sd2v_src,
                                     "mossy stone floor", "dark", 7.5, seed=4)


def test_sdxl_safetensors_matches_from_single_file(tiny_sdxl_file, tiny_sdxl_file_src, tmp_path):
    out = _export(tiny_sdxl_file, tmp_path / "pkg", config=str(tiny_sdxl_file_src))
    m = json.loads((out / "model.json").read_text())
    assert m["family"] == "sdxl" and m["source_file"]["family"] == "sdxl"
    assert [e["hidden_size"] for e in m["text_encoders"]] == [32, 48]
    _assert_matches_from_single_file(out, "StableDiffusionXLPipeline", tiny_sdxl_file, tiny_sdxl_file_src,
                                     "weathered blue wooden planks", "dark", 5.0, seed=5)


def test_inpainting_checkpoint_graphs_match_from_single_file(tiny_inpaint_file, tiny_inpaint_src, tmp_path):
    """Each exported graph against the from_single_file pipeline's component on the same inputs (the runtime's
    inpainting loop, with its mask and masked-image inputs, is not here yet)."""
    import onnxruntime as ort

    out = _export(tiny_inpaint_file, tmp_path / "pkg", config=str(tiny_inpaint_src))
    m = json.loads((out / "model.json").read_text())
    assert m["source_file"]["family"] == "sd1-inpaint"
    ref = _reference("StableDiffusionInpaintPipeline", tiny_inpaint_file, tiny_inpaint_src)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, ref.text_encoder.config.vocab_size, (2, 77), generator=g)
    sample, context = torch.randn(2, 9, 16, 24, generator=g), torch.randn(2, 77, 32, generator=g)
    timestep = torch.tensor([999.0, 412.0])
    latent, image = torch.randn(1, 4, 16, 24, generator=g), torch.rand(1, 3, 32, 48, generator=g) * 2 - 1
    with torch.no_grad():
        expected = {
            "text_encoder.onnx": ref.text_encoder(ids).last_hidden_state,
            "unet.onnx": ref.unet(sample, timestep, context).sample,
            "vae_decoder.onnx": ref.vae.decode(latent).sample,
            "vae_encoder.onnx": ref.vae.quant_conv(ref.vae.encoder(image)),
        }
    feeds = {"text_encoder.onnx": {"input_ids": ids.numpy()},
             "unet.onnx": {"sample": sample.numpy(), "timestep": timestep.numpy(),
                           "encoder_hidden_states": context.numpy()},
             "vae_decoder.onnx": {"latent": latent.numpy()}, "vae_encoder.onnx": {"image": image.numpy()}}
    for graph, want in expected.items():
        session = ort.InferenceSession(str(out / graph), providers=["CPUExecutionProvider"])
        got = session.run(None, feeds[graph])[0]
        assert got.shape == tuple(want.shape), graph
        assert np.max(np.abs(got - want.numpy())) < 1e-4, graph


def test_family_comes_from_the_tensors_and_sd2_asks_when_they_cannot_tell(
        tiny_sd_file, tiny_sd2v_file, tiny_sd2v_src, tiny_sdxl_file, tiny_inpaint_file):
    from aigc_bridge_export.single_file import detect_layout, load_source
    from aigc_bridge_export.tensor_files import tensor_shapes

    found = {p.name: detect_layout(tensor_shapes(p, "source"), p.name).candidates
             for p in (tiny_sd_file, tiny_sd2v_file, tiny_sdxl_file, tiny_inpaint_file)}
    assert found == {"tiny-sd1.safetensors": ["sd1"], "tiny-sd2v.ckpt": ["sd2", "sd2-v"],
                     "tiny-sdxl.safetensors": ["sdxl"], "tiny-sd1-inpainting.safetensors": ["sd1-inpaint"]}
    with pytest.raises(ExportError, match=r"SD 2\.x checkpoint.*--family sd2\b.*--family sd2-v") as info:
        load_source(str(tiny_sd2v_file), log=lambda _m: None)
    assert info.value.field == "family"
    with pytest.raises(ExportError, match=r"--family sdxl does not fit tiny-sd1\.safetensors: its tensors are SD 1\.x"):
        load_source(str(tiny_sd_file), family="sdxl", log=lambda _m: None)
    # --family overrides the config's prediction type where the tensors cannot tell
    loaded = load_source(str(tiny_sd2v_file), config=str(tiny_sd2v_src), family="sd2", log=lambda _m: None)
    assert loaded.pipe.scheduler.config.prediction_type == "epsilon" and loaded.source_file["family"] == "sd2"


def test_an_unknown_layout_says_what_the_file_holds(tiny_sd_src, tmp_path):
    from aigc_bridge_export.tiny import write_tiny_lora
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    weird = tmp_path / "weird.safetensors"
    save_file({"encoder.blocks.0.weight": torch.zeros(2), "encoder.blocks.1.weight": torch.zeros(2),
               "head.weight": torch.zeros(2)}, str(weird))
    unet_only = tiny_sd_src / "unet" / "diffusion_pytorch_model.safetensors"
    lora = write_tiny_lora(DiffusionPipeline.from_pretrained(tiny_sd_src), tmp_path / "style.safetensors")
    for path, says in ((weird, r"3 tensors: encoder\.blocks\* \(2\), head\.weight\* \(1\)"),
                       (unet_only, "one diffusers component: pass the whole diffusers pipeline folder"),
                       (lora, r"a LoRA: pass it with --lora")):
        with pytest.raises(ExportError, match="not a Stable Diffusion checkpoint in the original layout") as info:
            _export(path, tmp_path / "out", config=str(tiny_sd_src))
        assert re.search(says, info.value.message), info.value.message
    assert not (tmp_path / "out").exists()


def test_missing_configs_offline_name_both_places(tiny_sd_file, tmp_path, monkeypatch):
    import huggingface_hub
    from aigc_bridge_export.single_file import load_source

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: nothing is ever downloaded
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ExportError) as info:
        load_source(str(tiny_sd_file), log=lambda _m: None)
    message = info.value.message
    assert "--config DIR" in message and "the hub (stable-diffusion-v1-5/stable-diffusion-v1-5)" in message
    assert "not in the local cache" in message and info.value.field == "config"
    with pytest.raises(ExportError, match="lacks model_index.json, unet/config.json"):
        load_source(str(tiny_sd_file), config=str(tmp_path), log=lambda _m: None)


def test_a_config_of_another_family_is_refused(tiny_sd_file, tiny_sdxl_file_src, tiny_inpaint_file, tiny_sd_src):
    from aigc_bridge_export.single_file import load_source

    with pytest.raises(ExportError, match=r"does not fit tiny-sd1\.safetensors: its UNet takes 4 channels and "
                                          r"80-wide text features, the checkpoint's takes 4 and 32"):
        load_source(str(tiny_sd_file), config=str(tiny_sdxl_file_src), log=lambda _m: None)
    with pytest.raises(ExportError, match=r"takes 4 channels .* the checkpoint's takes 9"):
        load_source(str(tiny_inpaint_file), config=str(tiny_sd_src), log=lambda _m: None)


class _Payload:
    """Pickles as a call to open(path, "w"): loading it the unsafe way creates the file."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _booby_trapped_ckpt(path, marker) -> None:
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)},
                "payload": _Payload(marker)}, path)


def test_a_ckpt_whose_pickle_would_run_code_is_refused_and_nothing_runs(tmp_path, tiny_sd_src):
    bad, marker = tmp_path / "model.ckpt", tmp_path / "pwned"
    probe, probe_marker = tmp_path / "probe.ckpt", tmp_path / "probe-ran"
    _booby_trapped_ckpt(bad, marker)
    _booby_trapped_ckpt(probe, probe_marker)
    torch.load(probe, weights_only=False)  # the payload is live: an unsafe load of the same kind of file runs it
    assert probe_marker.exists()
    with pytest.raises(ExportError, match=r"model\.ckpt was refused: it is a pickle that would run code when "
                                          r"loaded \(it asks for io\.open\); nothing in it was run"):
        _export(bad, tmp_path / "out", config=str(tiny_sd_src))
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_lightning_ckpt_metadata_loads_weights_only(tmp_path):
    """SD 1.x .ckpt files pickle Lightning's ModelCheckpoint class and numpy scalars beside the weights."""
    script = """
import sys, types, numpy as np, torch
module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
class ModelCheckpoint:
    pass
ModelCheckpoint.__module__ = module.__name__
module.ModelCheckpoint = ModelCheckpoint
for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules[module.__name__] = module
torch.save({"epoch": 6, "global_step": np.int64(470000), "pytorch-lightning_version": "1.4.2",
            "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.12), "dirpath": "/logs"}},
            "state_dict": {"model.diffusion_model.out.2.bias": torch.ones(4)}}, sys.argv[1])
"""
    path = tmp_path / "sd-v1-legacy.ckpt"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120)
    from aigc_bridge_export.tensor_files import load_tensors

    tensors = load_tensors(path, "source")
    assert list(tensors) == ["model.diffusion_model.out.2.bias"] and torch.equal(tensors[list(tensors)[0]],
                                                                                  torch.ones(4))
