"""ControlNet and SD 2 depth: exported beside the model, run in the one loop, matching diffusers' pipelines on the
same latents (fp32, CPU, max |diff| < 1e-4 in [0, 1]); added to an existing package atomically; mismatches and
missing controlnets are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.conditioning import Noise
from aigc_bridge.errors import InvalidRequest
from aigc_bridge.input_image import InputImage
from aigc_bridge.request import ControlInput, GenerateRequest
from tests.conftest import cli, png_bytes

SEED = 7


def _pattern(size: int = 64, seed: int = 0) -> np.ndarray:
    """A control image with structure (edges / depth-like gradients), uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    a = np.sin(2 * np.pi * (x * rng.uniform(1, 3) + y * rng.uniform(1, 3)))
    b = np.cos(2 * np.pi * (x * rng.uniform(1, 3) - y * rng.uniform(1, 3)))
    return np.round(np.stack([a > 0, b > 0, (a * b) * 0.5 + 0.5], axis=-1) * 255).astype(np.uint8)


def _depth(size: int = 64) -> np.ndarray:
    """A 16-bit depth map: a sphere in front of a slanted floor (near = bright)."""
    y, x = np.mgrid[0:size, 0:size] / size
    sphere = np.clip(1 - ((x - 0.5) ** 2 + (y - 0.45) ** 2) / 0.08, 0, None)
    return np.round((0.3 * y + 0.7 * np.sqrt(sphere)) / 1.0 * 65535).astype(np.uint16)


def _control(name: str, pixels: np.ndarray, index: int = 0, **kwargs) -> ControlInput:
    return ControlInput(name, InputImage.from_bytes(png_bytes(pixels), f"controls[{index}].image"), **kwargs)


def _latents(seed: int = 3, count: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 4, 32, 32), dtype=np.float32)


@pytest.fixture(scope="module")
def controlnets(workdir, tiny_sd_src):
    from aigc_bridge_export.tiny import build_tiny_controlnet

    out = {}
    for name, seed in (("depth", 1), ("canny", 2)):
        path = workdir / f"cn-sd-{name}"
        if not path.exists():
            build_tiny_controlnet(tiny_sd_src, path, seed=seed)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def sd_cn(workdir, tiny_sd_src, controlnets):
    """The tiny SD model exported with two controlnets (names from the sources' "depth" / "canny")."""
    from aigc_bridge_export.onnx_export import export_pipeline

    out = workdir / "tiny-sd-cn-onnx"
    if not out.exists():
        export_pipeline(tiny_sd_src, out, model_id="tiny-sd-cn", log=lambda _m: None,
                        controlnets=[str(controlnets["depth"]), str(controlnets["canny"])])
    return out


@pytest.fixture(scope="module")
def sd_cn_pipe(sd_cn):
    return Pipeline.load(sd_cn, provider="cpu")


def _diffusers_controlnet(src, controlnet_dirs, **kwargs) -> np.ndarray:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    nets = [ControlNetModel.from_pretrained(d, torch_dtype=torch.float32) for d in controlnet_dirs]
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        src, controlnet=nets[0] if len(nets) == 1 else nets, torch_dtype=torch.float32, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(output_type="np", **kwargs).images


def test_package_layout_shares_the_unet_weights(sd_cn, tiny_sd):
    m = json.loads((sd_cn / "model.json").read_text())
    assert sorted(m["controlnets"]) == ["canny", "depth"]
    assert set(m["unet"]["control"]["graphs"]) == {"none", "both", "x"}
    assert m["controlnets"]["depth"]["graphs"]["both"] == "controlnet.depth.tile_both.onnx"
    # the residual-input variants add no weights: unet.weights is the plain package's
    plain = json.loads((tiny_sd / "model.json").read_text())
    assert (sd_cn / "unet.weights").stat().st_size == (tiny_sd / "unet.weights").stat().st_size
    assert m["files"]["unet.weights"] == plain["files"]["unet.weights"]
    assert all(m["parity"][g]["max_abs_error"] < 1e-4 for g in m["unet"]["control"]["graphs"].values())
    assert "controlnet.canny.onnx" in m["memory"]["graphs"]


def test_one_controlnet_matches_diffusers(sd_cn_pipe, tiny_sd_src, controlnets):
    image = _pattern(seed=1)
    latents = _latents()
    ours = sd_cn_pipe.generate(GenerateRequest("red brick wall", negative_prompt="blurry", steps=6, guidance=7.5,
                                               seed=0, tile="none", controls=(_control("depth", image, scale=0.8),)),
                               noise=Noise(latents))
    ref = _diffusers_controlnet(tiny_sd_src, [controlnets["depth"]], prompt="red brick wall",
                                negative_prompt="blurry", image=Image.fromarray(image), num_inference_steps=6,
                                guidance_scale=7.5, controlnet_conditioning_scale=0.8,
                                latents=torch.from_numpy(latents))
    plain = sd_cn_pipe.generate(GenerateRequest("red brick wall", negative_prompt="blurry", steps=6, guidance=7.5,
                                                seed=0, tile="none"), noise=Noise(latents))
    assert ref.std() > 0.05
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4
    assert np.abs(ours.images[0] - plain.images[0]).mean() > 1e-3  # the control did steer


def test_two_controlnets_with_guidance_windows_match_diffusers(sd_cn_pipe, tiny_sd_src, controlnets):
    first, second = _pattern(seed=2), _pattern(seed=3)
    latents = _latents(seed=4, count=2)
    controls = (_control("depth", first, 0, scale=0.7, start=0.0, end=0.6),
                _control("canny", second, 1, scale=1.3, start=0.3, end=1.0))
    ours = sd_cn_pipe.generate(GenerateRequest("weathered green marble", steps=8, guidance=6.0, seed=0, count=2,
                                               tile="none", controls=controls), noise=Noise(latents))
    ref = _diffusers_controlnet(tiny_sd_src, [controlnets["depth"], controlnets["canny"]],
                                prompt="weathered green marble",
                                image=[Image.fromarray(first), Image.fromarray(second)],
                                num_inference_steps=8, guidance_scale=6.0, num_images_per_prompt=2,
                                controlnet_conditioning_scale=[0.7, 1.3], control_guidance_start=[0.0, 0.3],
                                control_guidance_end=[0.6, 1.0], latents=torch.from_numpy(latents))
    for i in range(2):
        assert np.max(np.abs(ours.images[i] - ref[i])) < 1e-4


def test_sdxl_controlnet_matches_diffusers(workdir, tiny_sdxl_src):
    from aigc_bridge_export.onnx_export import export_pipeline
    from aigc_bridge_export.tiny import build_tiny_controlnet
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    cn_dir = build_tiny_controlnet(tiny_sdxl_src, workdir / "cn-sdxl-canny", seed=5)
    package = export_pipeline(tiny_sdxl_src, workdir / "tiny-sdxl-cn-onnx", overwrite=True, seamless=False,
                              memory_profile=False, controlnets=[str(cn_dir)], log=lambda _m: None)
    pipe = Pipeline.load(package, provider="cpu")
    image, latents = _pattern(seed=5), _latents(seed=6)
    ours = pipe.generate(GenerateRequest("weathered blue wooden planks", steps=5, guidance=5.0, seed=0,
                                         controls=(_control("canny", image, scale=0.9, end=0.8),)),
                         noise=Noise(latents))
    ref_pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
        tiny_sdxl_src, controlnet=ControlNetModel.from_pretrained(cn_dir), torch_dtype=torch.float32)
    ref_pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = ref_pipe("weathered blue wooden planks", image=Image.fromarray(image), num_inference_steps=5,
                       guidance_scale=5.0, controlnet_conditioning_scale=0.9, control_guidance_end=0.8,
                       latents=torch.from_numpy(latents), output_type="np").images
    assert ref.std() > 0.05
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4


@pytest.fixture(scope="module")
def depth_model(workdir):
    from aigc_bridge_export.onnx_export import export_pipeline
    from aigc_bridge_export.tiny import build_tiny_depth

    src = workdir / "tiny-depth-diffusers"
    if not src.exists():
        build_tiny_depth(src)
    out = workdir / "tiny-depth-onnx"
    if not out.exists():
        export_pipeline(src, out, model_id="tiny-depth", seamless=False, log=lambda _m: None)
    return src, out


def test_depth2img_with_a_given_depth_map_matches_diffusers(depth_model):
    from diffusers import StableDiffusionDepth2ImgPipeline

    src, package = depth_model
    pipe = Pipeline.load(package, provider="cpu")
    assert pipe.manifest["unet"]["conditioning"] == "depth" and pipe.manifest["latent_channels"] == 4
    init, depth = _pattern(seed=8), _depth()
    g = torch.Generator().manual_seed(SEED)
    eps, noise = (torch.randn((1, 4, 32, 32), generator=g).numpy() for _ in range(2))
    request = GenerateRequest("grey stone floor", negative_prompt="blurry", steps=8, guidance=7.5, seed=0,
                              init=InputImage.from_bytes(png_bytes(init), "init"), strength=0.7,
                              depth=InputImage.from_bytes(png_bytes(depth), "depth"))
    ours = pipe.generate(request, noise=Noise(noise, init=eps))
    ref_pipe = StableDiffusionDepth2ImgPipeline.from_pretrained(src, depth_estimator=None, feature_extractor=None,
                                                                torch_dtype=torch.float32)
    ref_pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = ref_pipe("grey stone floor", negative_prompt="blurry", image=Image.fromarray(init),
                       depth_map=torch.from_numpy(depth.astype(np.float32) / 65535.0)[None], strength=0.7,
                       num_inference_steps=8, guidance_scale=7.5, generator=torch.Generator().manual_seed(SEED),
                       output_type="np").images
    assert ref.std() > 0.05
    assert np.max(np.abs(ours.images[0] - ref[0])) < 1e-4


def test_depth_model_checks(depth_model, sd_cn_pipe):
    pipe = Pipeline.load(depth_model[1], provider="cpu")
    with pytest.raises(InvalidRequest, match="depth model") as err:
        pipe.resolve(GenerateRequest("stone", steps=2))
    assert err.value.field == "depth"
    with pytest.raises(InvalidRequest, match="takes no depth map.*it has canny, depth") as err:
        sd_cn_pipe.resolve(GenerateRequest("stone", steps=2, depth=InputImage.from_bytes(png_bytes(_depth()), "depth")))
    assert err.value.field == "depth"
    # from noise: depth without an init is text to image with the depth channel
    result = pipe.generate(GenerateRequest("stone", steps=2, seed=1,
                                           depth=InputImage.from_bytes(png_bytes(_depth()), "depth")))
    assert result.images[0].shape == (64, 64, 3)


def test_a_controlnet_the_package_lacks_names_what_it_has(sd_cn_pipe, sd_pipeline):
    request = GenerateRequest("stone", steps=2, controls=(_control("normal", _pattern()),))
    with pytest.raises(InvalidRequest, match="no controlnet 'normal': it has canny, depth") as err:
        sd_cn_pipe.resolve(request)
    assert err.value.field == "controls[0].name"
    with pytest.raises(InvalidRequest, match="it has none .*add-controlnet"):
        sd_pipeline.resolve(request)


def test_tiled_controls_stay_periodic(sd_cn_pipe):
    """With tile both, the controlnet's circular variant runs: rolling the control image and the latents rolls
    the output (the shared notes' circular-shift test)."""
    image, latents = _pattern(seed=9), _latents(seed=9)
    request = GenerateRequest("red brick wall", steps=3, guidance=7.5, seed=0, tile="both",
                              controls=(_control("canny", image),))
    a = sd_cn_pipe.generate(request, noise=Noise(latents)).images[0]
    rolled = GenerateRequest("red brick wall", steps=3, guidance=7.5, seed=0, tile="both",
                             controls=(_control("canny", np.roll(image, 16, axis=1)),))
    b = sd_cn_pipe.generate(rolled, noise=Noise(np.roll(latents, 8, axis=3))).images[0]
    assert np.max(np.abs(np.roll(a, 16, axis=1) - b)) < 1e-4


def test_add_controlnet_to_an_existing_package(workdir, tiny_sd_src, controlnets, sd_cn_pipe, tmp_path):
    package = tmp_path / "pkg"
    run = cli("export", str(tiny_sd_src), str(package), "--control-inputs", "--no-seamless")
    assert run.returncode == 0, run.stderr
    before = json.loads((package / "model.json").read_text())
    assert not before["controlnets"] and before["unet"]["control"]
    run = cli("add-controlnet", str(package), str(controlnets["canny"]), "--name", "edges")
    assert run.returncode == 0, run.stderr
    after = json.loads((package / "model.json").read_text())
    assert sorted(after["controlnets"]) == ["edges"] and after["package_hash"] != before["package_hash"]
    assert {"controlnet.edges.onnx", "controlnet.edges.weights"} <= set(after["files"])
    pipe = Pipeline.load(package, provider="cpu")  # verifies every file and the package hash
    image, latents = _pattern(seed=10), _latents(seed=10)
    added = pipe.generate(GenerateRequest("moss", steps=3, seed=0, tile="none",
                                          controls=(_control("edges", image),)), noise=Noise(latents))
    exported = sd_cn_pipe.generate(GenerateRequest("moss", steps=3, seed=0, tile="none",
                                                   controls=(_control("canny", image),)), noise=Noise(latents))
    assert np.max(np.abs(added.images[0] - exported.images[0])) < 1e-5
    # the same name again: refused, the package unchanged
    run = cli("add-controlnet", str(package), str(controlnets["depth"]), "--name", "edges")
    assert run.returncode == 2 and "already has a controlnet named edges" in run.stderr
    assert json.loads((package / "model.json").read_text()) == after


def test_add_controlnet_to_a_package_exported_without_control_inputs(tiny_sd, tiny_sd_src, controlnets, sd_cn_pipe,
                                                                    workdir, tmp_path):
    import shutil

    from aigc_bridge_export.tiny import build_tiny_sd

    package = tmp_path / "plain"
    shutil.copytree(tiny_sd, package)
    before = (package / "model.json").read_bytes()
    run = cli("add-controlnet", str(package), str(controlnets["canny"]))
    assert run.returncode == 2 and "--base SOURCE" in run.stderr
    other = build_tiny_sd(tmp_path / "other-sd", seed=5)
    run = cli("add-controlnet", str(package), str(controlnets["canny"]), "--base", str(other))
    assert run.returncode == 2 and "is not the model tiny-sd was exported from" in run.stderr, run.stderr
    assert (package / "model.json").read_bytes() == before
    assert not any(p.name.startswith("unet.control") or p.name.startswith("controlnet.") for p in package.iterdir())
    run = cli("add-controlnet", str(package), str(controlnets["canny"]), "--base", str(tiny_sd_src))
    assert run.returncode == 0, run.stderr
    m = json.loads((package / "model.json").read_text())
    assert set(m["unet"]["control"]["graphs"]) == {"none", "both", "x"} and sorted(m["controlnets"]) == ["canny"]
    assert (package / "unet.weights").read_bytes() == (tiny_sd / "unet.weights").read_bytes()
    assert "unet.control.weights" not in m["files"]  # every tensor of the variant is the package's own
    image, latents = _pattern(seed=13), _latents(seed=13)
    request = GenerateRequest("moss", steps=3, seed=0, tile="both", controls=(_control("canny", image),))
    added = Pipeline.load(package, provider="cpu").generate(request, noise=Noise(latents))
    exported = sd_cn_pipe.generate(request, noise=Noise(latents))
    assert np.max(np.abs(added.images[0] - exported.images[0])) < 1e-5


def test_an_sd_controlnet_on_an_sdxl_package_is_refused_naming_both(workdir, tiny_sdxl_src, controlnets, tmp_path):
    package = tmp_path / "xl"
    run = cli("export", str(tiny_sdxl_src), str(package), "--control-inputs", "--no-seamless", "--model-id", "tiny-xl")
    assert run.returncode == 0, run.stderr
    manifest = (package / "model.json").read_bytes()
    files = sorted(p.name for p in package.iterdir())
    run = cli("add-controlnet", str(package), str(controlnets["depth"]))
    assert run.returncode == 2
    message = run.stderr
    assert str(controlnets["depth"]) in message and "tiny-xl" in message
    assert "SD-like: cross-attention 32" in message and "SDXL-like: cross-attention 64" in message
    assert (package / "model.json").read_bytes() == manifest and sorted(p.name for p in package.iterdir()) == files
    # and at export time, before anything is written
    run = cli("export", str(tiny_sdxl_src), str(tmp_path / "xl2"), "--controlnet", f"{controlnets['depth']}=d")
    assert run.returncode == 2 and "does not fit model" in run.stderr
    assert not (tmp_path / "xl2").exists()


def test_generate_command_line_controls(sd_cn, tmp_path):
    Image.fromarray(_pattern(seed=11)).save(tmp_path / "edges.png")
    Image.fromarray(_pattern(seed=12)).save(tmp_path / "depth.png")
    out = tmp_path / "out.png"
    run = cli("generate", "red brick wall", "-o", str(out), "--model", str(sd_cn), "--steps", "2", "--seed", "1",
              "--control", f"depth={tmp_path / 'depth.png'}:0.8", "--control",
              f"canny={tmp_path / 'edges.png'}:1.2:0:0.5")
    assert run.returncode == 0, run.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert [(c["name"], c["scale"], c["start"], c["end"]) for c in meta["controls"]] == \
        [("depth", 0.8, 0.0, 1.0), ("canny", 1.2, 0.0, 0.5)]
    run = cli("generate", "x", "-o", str(out), "--model", str(sd_cn), "--control",
              f"canny={tmp_path / 'edges.png'}:1:0")
    assert run.returncode == 2 and "START needs END" in run.stderr


def test_memory_estimate_counts_the_controlnets(sd_cn_pipe):
    plain = sd_cn_pipe.resolve(GenerateRequest("x", steps=2, tile="none", width=256, height=256))
    controlled = sd_cn_pipe.resolve(GenerateRequest("x", steps=2, tile="none", width=256, height=256, controls=(
        _control("depth", _pattern()), _control("canny", _pattern(), 1))))
    without, with_controls = sd_cn_pipe.memory_estimate(plain), sd_cn_pipe.memory_estimate(controlled)
    assert with_controls.parts["denoising"] > without.parts["denoising"]
