"""LoRAs fused and embeddings added at export, against diffusers' load_lora_weights + fuse_lora and
load_textual_inversion on the same latents; provenance; refusals that name what did not fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from aigc_bridge_export.errors import ExportError

from aigc_bridge.assets.outputs import write_outputs
from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.engine.package import sha256_file
from aigc_bridge.request import GenerateRequest

from .conftest import cli


def _export(source, out, **kwargs) -> Path:
    from aigc_bridge_export.onnx_export import export_pipeline

    return export_pipeline(source, out, seamless=False, log=lambda _m: None, **kwargs)


def _pipe(src):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _fused_reference(src, loras: list[tuple[Path, float]]):
    """What a diffusers user does: load each LoRA, weight them, fuse."""
    pipe = _pipe(src)
    names = [f"ref_{i}" for i in range(len(loras))]
    for name, (path, _w) in zip(names, loras):
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=[w for _p, w in loras])
    pipe.fuse_lora(adapter_names=names, components=[c for c in ("unet", "text_encoder", "text_encoder_2")
                                                    if getattr(pipe, c, None) is not None])
    return pipe


def _image(pipe, latents, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return pipe(latents=torch.from_numpy(latents), output_type="np", **kwargs).images


def test_two_loras_in_both_formats_fused_at_export_match_diffusers(tiny_sd_src, tiny_sd, tmp_path):
    from aigc_bridge_export.tiny import write_tiny_lora

    base = _pipe(tiny_sd_src)
    kohya = write_tiny_lora(base, tmp_path / "bricks_kohya.safetensors", "kohya", rank=4, alpha=2.0, seed=1)
    peft = write_tiny_lora(base, tmp_path / "moss_peft.safetensors", "peft", rank=2, seed=2)
    out = tmp_path / "pkg"
    proc = cli("export", str(tiny_sd_src), str(out), "--no-seamless", "--lora", f"{kohya}:0.8", "--lora",
               f"{peft}:0.5")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "model.json").read_text())
    assert m["loras"] == [{"name": kohya.name, "sha256": sha256_file(kohya), "weight": 0.8},
                          {"name": peft.name, "sha256": sha256_file(peft), "weight": 0.5}]
    latents = np.random.default_rng(7).standard_normal((1, 4, 32, 32), dtype=np.float32)
    request = GenerateRequest("red brick wall", negative_prompt="blurry", steps=4, guidance=7.5, seed=0)
    ours = Pipeline.load(out, provider="cpu").generate(request, noise=Noise(latents))
    ref = _image(_fused_reference(tiny_sd_src, [(kohya, 0.8), (peft, 0.5)]), latents, prompt="red brick wall",
                 negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.5)
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4
    plain = Pipeline.load(tiny_sd, provider="cpu").generate(request, noise=Noise(latents))
    assert np.max(np.abs(ours.images[0] - plain.images[0])) > 1e-2  # the LoRAs change the picture (>> 1e-4)
    # every result names the LoRAs, with hash and weight: the engine's metadata and the JSON beside the image
    assert ours.metadata(0)["loras"] == m["loras"]
    write_outputs(ours.images[0], ours.metadata(0), tmp_path / "wall.png")
    assert json.loads((tmp_path / "wall.json").read_text())["loras"] == m["loras"]


def test_weight_zero_is_the_base_model_and_embeddings_match_diffusers(tiny_sd_src, tiny_sd, tmp_path):
    from aigc_bridge_export.tiny import write_tiny_embedding, write_tiny_lora

    base = _pipe(tiny_sd_src)
    lora = write_tiny_lora(base, tmp_path / "strong.safetensors", "kohya", alpha=4.0, seed=3)
    embedding = write_tiny_embedding(base, tmp_path / "tilestyle.pt", vectors=3, seed=4)
    out = _export(tiny_sd_src, tmp_path / "pkg", loras=[f"{lora}:0"], embeddings=[f"{embedding}:<tile-style>"])
    m = json.loads((out / "model.json").read_text())
    assert m["embeddings"] == [{"name": "tilestyle.pt", "sha256": sha256_file(embedding), "token": "<tile-style>",
                                "vectors": [3]}]
    assert m["text_encoders"][0]["token_expansions"] == {"<tile-style>": "<tile-style> <tile-style>_1 <tile-style>_2"}
    latents = np.random.default_rng(8).standard_normal((1, 4, 32, 32), dtype=np.float32)
    ours = Pipeline.load(out, provider="cpu")
    plain = Pipeline.load(tiny_sd, provider="cpu")
    request = GenerateRequest("grey hexagon tiles", steps=4, guidance=7.5, seed=0)
    assert np.max(np.abs(ours.generate(request, noise=Noise(latents)).images[0]
                         - plain.generate(request, noise=Noise(latents)).images[0])) < 1e-5
    reference = _pipe(tiny_sd_src)
    reference.load_textual_inversion(str(embedding), token="<tile-style>")
    prompt = "grey <tile-style> hexagon tiles"
    with_token = ours.generate(GenerateRequest(prompt, steps=4, guidance=7.5, seed=0), noise=Noise(latents))
    ref = _image(reference, latents, prompt=prompt, num_inference_steps=4, guidance_scale=7.5)
    assert np.max(np.abs(with_token.images[0] - ref[0])) < 1e-4
    assert np.max(np.abs(with_token.images[0] - plain.generate(request, noise=Noise(latents)).images[0])) > 1e-3


def test_sdxl_lora_on_both_text_encoders_and_embedding_match_diffusers(tiny_sdxl_src, tmp_path):
    from aigc_bridge_export.tiny import write_tiny_embedding, write_tiny_lora

    base = _pipe(tiny_sdxl_src)
    lora = write_tiny_lora(base, tmp_path / "xl_style.safetensors", "kohya", seed=5)  # sgm block names, te1 / te2
    embedding = write_tiny_embedding(base, tmp_path / "xlstyle.safetensors", vectors=2, seed=6)
    out = _export(tiny_sdxl_src, tmp_path / "pkg", loras=[f"{lora}:0.7"], embeddings=[str(embedding)])
    m = json.loads((out / "model.json").read_text())
    assert m["embeddings"][0]["token"] == "xlstyle" and m["embeddings"][0]["vectors"] == [2, 2]
    assert all(e["token_expansions"] == {"xlstyle": "xlstyle xlstyle_1"} for e in m["text_encoders"])
    reference = _fused_reference(tiny_sdxl_src, [(lora, 0.7)])
    reference.load_textual_inversion(_embedding_part(embedding, "clip_l"), token="xlstyle",
                                     text_encoder=reference.text_encoder, tokenizer=reference.tokenizer)
    reference.load_textual_inversion(_embedding_part(embedding, "clip_g"), token="xlstyle",
                                     text_encoder=reference.text_encoder_2, tokenizer=reference.tokenizer_2)
    latents = np.random.default_rng(9).standard_normal((1, 4, 32, 32), dtype=np.float32)
    prompt = "xlstyle weathered blue wooden planks"
    ours = Pipeline.load(out, provider="cpu").generate(
        GenerateRequest(prompt, negative_prompt="dark", steps=4, guidance=5.0, seed=0), noise=Noise(latents))
    ref = _image(reference, latents, prompt=prompt, negative_prompt="dark", num_inference_steps=4,
                 guidance_scale=5.0)
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4


def _embedding_part(path: Path, key: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))[key]


def test_a_lora_for_another_family_or_with_stray_keys_is_refused(tiny_sd_src, tiny_sdxl_src, tmp_path):
    from aigc_bridge_export.tiny import write_tiny_lora
    from safetensors.torch import load_file, save_file

    sd_lora = write_tiny_lora(_pipe(tiny_sd_src), tmp_path / "sd_style.safetensors", "kohya")
    xl_lora = write_tiny_lora(_pipe(tiny_sdxl_src), tmp_path / "xl_style.safetensors", "kohya")
    with pytest.raises(ExportError, match=r"xl_style\.safetensors is an SDXL LoRA .*one text encoder"):
        _export(tiny_sd_src, tmp_path / "a", loras=[str(xl_lora)])
    with pytest.raises(ExportError, match=r"sd_style\.safetensors does not fit this model: \d+ of its layers have "
                                          r"other shapes, e\.g\. unet\..*attn2\.to_k \(input 32, the model's 64\).*"
                                          r"a LoRA for another family"):
        _export(tiny_sdxl_src, tmp_path / "b", loras=[str(sd_lora)])
    stray = load_file(str(sd_lora))
    for suffix in ("lora_down.weight", "lora_up.weight", "alpha"):
        stray[f"lora_unet_down_blocks_7_attentions_0_proj_in.{suffix}"] = stray[
            f"lora_unet_down_blocks_1_attentions_0_proj_in.{suffix}"].clone()
    save_file(stray, str(tmp_path / "stray.safetensors"))
    with pytest.raises(ExportError, match=r"stray\.safetensors: 1 of its layers match nothing in this model, e\.g\. "
                                          r"unet\.down_blocks\.7\.attentions\.0\.proj_in"):
        _export(tiny_sd_src, tmp_path / "c", loras=[str(tmp_path / "stray.safetensors")])
    with pytest.raises(ExportError, match=r"--lora .*:strong: the weight after ':' must be a number"):
        _export(tiny_sd_src, tmp_path / "d", loras=[f"{sd_lora}:strong"])
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_an_embedding_of_another_width_is_refused(tiny_sdxl_src, tiny_sd_src, tmp_path):
    from aigc_bridge_export.tiny import write_tiny_embedding

    xl = write_tiny_embedding(_pipe(tiny_sdxl_src), tmp_path / "xl.safetensors")
    with pytest.raises(ExportError, match=r"embedding xl\.safetensors is for SDXL \(clip_l / clip_g vectors\)"):
        _export(tiny_sd_src, tmp_path / "a", embeddings=[str(xl)])
    torch.save({"string_to_param": {"*": torch.zeros(2, 48)}, "name": "wide"}, tmp_path / "wide.pt")
    with pytest.raises(ExportError, match=r"embedding wide\.pt \(token 'wide'\):.*shape"):
        _export(tiny_sd_src, tmp_path / "b", embeddings=[str(tmp_path / "wide.pt")])


def test_file_value_specs_keep_windows_paths():
    from aigc_bridge_export.adapters import parse_embedding, parse_lora

    spec = parse_lora(r"C:\loras\brick.safetensors:0.7")
    assert (spec.path, spec.weight) == (Path(r"C:\loras\brick.safetensors"), 0.7)
    assert parse_lora("C:/loras/brick.safetensors").weight == 1.0
    assert parse_lora("/a:b/brick.safetensors:-0.5").path == Path("/a:b/brick.safetensors")
    assert parse_embedding("emb/EasyNegative.pt").token is None
    assert parse_embedding("emb/EasyNegative.pt:<bad-hands>").token == "<bad-hands>"
