"""texture-mini's training, end to end at toy size: train -> diffusers folder -> ONNX package -> runtime
-> evaluation, plus exact resume and the circular VAE encoder. The whole file runs in well under a minute."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from aigc_bridge.engine.conditioning import Noise

torch = pytest.importorskip("torch")


def _train(out, *extra):
    from aigc_bridge_export.texture_mini.train import main

    return main(["--out", str(out), "--preset", "test", "--no-eval", "--quiet", "--device", "cpu", "--threads", "1",
                 *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("texture-mini") / "run"
    assert _train(out) == 0
    return out


@pytest.fixture(scope="module")
def pipe(run_dir):
    from aigc_bridge.engine import Pipeline

    return Pipeline.load(run_dir / "texture-mini", provider="cpu")


def test_package_is_small_and_says_how_it_was_trained(run_dir, pipe):
    package = run_dir / "texture-mini"
    assert sum(p.stat().st_size for p in package.rglob("*") if p.is_file()) < 20 * 2**20
    m = pipe.manifest
    assert m["model_id"] == "texture-mini" and m["native_size"] == [32, 32]
    assert m["recommended"] == {"steps": 4, "guidance": 5.0, "tile": "both"}
    config = m["scheduler"]["config"]
    assert (config["beta_schedule"], config["beta_start"], config["beta_end"]) == ("linear", 1e-4, 0.02)
    assert config["timestep_spacing"] == "trailing" and m["prediction_type"] == "v_prediction"
    assert m["text_encoders"][0]["max_length"] == 16
    assert m["upscaler"] == "upscaler" and "upscaler/model.json" in m["files"]  # the 128 px stage ships inside
    sr = pipe.upscaler
    assert sr.scale == 4 and sr.manifest["architecture"] == "RealESRGAN Compact"
    assert sr.manifest["trained_for"] == {"model_id": "texture-mini", "input_size": [32, 32]}
    assert set(sr.manifest["graphs"]) == {"none", "both", "x"}


def test_the_128px_stage_keeps_generated_textures_tileable(pipe, run_dir, tmp_path):
    """Rolling the 32 px image rolls the 128 px one by 4x as much; `generate --target-size` goes through the stage."""
    from aigc_bridge.request import GenerateRequest

    from .conftest import cli

    image = pipe.generate(GenerateRequest("red brick wall", seed=1, tile="both")).images[0]
    up = pipe.upscaler(image, "both")
    assert up.shape == (128, 128, 3)
    rolled = pipe.upscaler(np.roll(image, (3, 5), axis=(0, 1)), "both")
    assert np.max(np.abs(np.roll(up, (12, 20), axis=(0, 1)) - rolled)) < 1e-5
    out = tmp_path / "wall.png"
    run = cli("generate", "red brick wall", "--model", str(run_dir / "texture-mini"), "--seed", "1", "--pbr",
              "--target-size", "256", "-o", str(out))
    assert run.returncode == 0, run.stderr
    notes = json.loads(out.with_suffix(".json").read_text())["outputs"]["processing"]
    assert notes[:2] == ["upscaled 32x32 -> 128x128 (texture-mini-sr, x4, tile=both)",
                         "resampled 128x128 -> 256x256 (Lanczos-3, tile=both)"]
    run = cli("generate", "red brick wall", "--model", str(run_dir / "texture-mini"), "--seed", "1",
              "--target-size", "256", "--upscale", "none", "-o", str(out), )
    assert run.returncode == 0, run.stderr
    assert json.loads(out.with_suffix(".json").read_text())["outputs"]["processing"][0].startswith("resampled 32x32")


def test_generated_textures_tile(pipe):
    """With tile "both" the whole pipeline commutes with circular shifts, so the output is periodic."""
    from aigc_bridge.request import GenerateRequest

    latents = np.random.default_rng(0).standard_normal((1, 4, 16, 16), dtype=np.float32)
    req = GenerateRequest("red brick wall", seed=1, tile="both")
    image = pipe.generate(req, noise=Noise(latents)).images[0]
    shifted = pipe.generate(req, noise=Noise(np.roll(latents, (2, 4), axis=(2, 3)))).images[0]
    assert image.shape == (32, 32, 3)
    assert np.max(np.abs(np.roll(image, (4, 8), axis=(0, 1)) - shifted)) < 1e-5


def test_training_tokens_are_the_runtime_tokens(run_dir):
    from aigc_bridge_export.texture_mini.config import preset
    from aigc_bridge_export.texture_mini.models import build_tokenizer, tokenize

    from aigc_bridge.engine.tokenizer import PromptTokenizer

    config = preset("test")
    captions = ["small weathered red brick wall", "", "Seamless BLUE hexagon-tiles!", "a purple unicorn " * 9]
    trained = tokenize(build_tokenizer(config), captions, config.text_length).numpy()
    runtime = PromptTokenizer(run_dir / "texture-mini" / "tokenizer" / "tokenizer.json", 16, 1)
    tokens = [runtime(caption) for caption in captions]
    assert np.array_equal(np.concatenate([t.ids for t in tokens]), trained)
    assert [bool(t.dropped) for t in tokens] == [False, False, False, True]  # the 27-word caption is cut
    assert (trained[0, :7] == trained[2, :7]).sum() >= 2  # case and punctuation are normalised away


def test_killed_run_resumes_to_the_same_weights(run_dir, tmp_path, monkeypatch):
    """SIGTERM mid-VAE and mid-UNet, then --resume: the weights equal the uninterrupted run's."""
    from aigc_bridge_export.texture_mini import loop
    from safetensors.numpy import load_file

    original = loop.Progress.update
    kill_at = {"vae": 3, "unet": 5, "sr": 3}

    def update(self, loss=None):
        original(self, loss)
        if self.bar is None and kill_at.get(self.desc) == self.steps:
            kill_at.pop(self.desc)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.Progress, "update", update)
    out = tmp_path / "run"
    assert _train(out) == 130                    # stopped in the VAE phase
    assert json.loads((out / "config.json").read_text())["unet_steps"] == 8
    with pytest.raises(SystemExit, match="--resume"):
        _train(out)
    assert _train(out, "--resume") == 130        # stopped in the UNet phase
    assert _train(out, "--resume") == 130        # stopped in the 128 px stage
    assert _train(out, "--resume") == 0
    history = json.loads((out / "timings.json").read_text())
    assert len(history) == 1                     # only the session that finished writes a line ...
    totals = history[0]["training_s_all_sessions"]
    assert set(totals) == {"vae", "unet", "sr"}  # ... but it counts the killed sessions' training too
    assert totals["vae"] > 0 and totals["unet"] > 0 and totals["sr"] > 0
    for part in ("unet", "text_encoder", "vae"):
        name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
        a, b = load_file(run_dir / part / name), load_file(out / part / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), part
    a, b = (torch.load(d / "sr" / "sr" / "texture-mini-sr.pth") for d in (run_dir, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "sr"


def test_the_128px_stage_starts_from_bilinear_not_from_blocks(tmp_path):
    """The stage adds its output to the nearest-upsampled input (the file format's network): started at random
    it paints 4 px blocks, which the first shipped stage kept after training; started as a bilinear upscaler it does
    not, and it is still the architecture spandrel detects."""
    import torch.nn.functional as F
    from aigc_bridge_export.seamless import seamless
    from aigc_bridge_export.texture_mini.config import sr_preset
    from aigc_bridge_export.texture_mini.sr_phase import build_sr
    from aigc_bridge_export.upscaler_export import load_descriptor

    from aigc_bridge.evaluation.sharpness import block_ratio

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    bilinear = F.interpolate(F.pad(x, (1, 1, 1, 1), mode="circular"), scale_factor=4, mode="bilinear")[..., 4:-4, 4:-4]
    ratios = {}
    for start in (True, False):
        model = build_sr(sr_preset("full", bilinear_start=start)).eval()
        with torch.no_grad(), seamless(model, "both"):
            y = model(x)
        ratios[start] = block_ratio(list(y.clamp(0, 1).numpy().transpose(0, 2, 3, 1)), 4)
        if start:
            assert (y - bilinear).abs().mean() < 0.01  # the bilinear image, plus a small random start of the detail
    assert ratios[True] < 1.2 < 2.0 < ratios[False], ratios
    path = tmp_path / "start.pth"
    torch.save(model.state_dict(), path)
    assert load_descriptor(path).architecture.id == "Compact"


def test_circular_vae_encoder_commutes_with_shifts():
    from aigc_bridge_export.texture_mini.circular import circular
    from aigc_bridge_export.texture_mini.config import preset
    from aigc_bridge_export.texture_mini.models import build_vae

    torch.manual_seed(0)
    vae = build_vae(preset("test")).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad(), circular(vae, "both"):
        z = vae.encode(x).latent_dist.mean
        z_shifted = vae.encode(torch.roll(x, (2, 4), dims=(2, 3))).latent_dist.mean
    assert torch.allclose(torch.roll(z, (1, 2), dims=(2, 3)), z_shifted, atol=1e-5)
    with torch.no_grad():
        plain = vae.encode(torch.roll(x, (2, 4), dims=(2, 3))).latent_dist.mean
    assert not torch.allclose(torch.roll(z, (1, 2), dims=(2, 3)), plain, atol=1e-3)


def test_evaluation_runs_on_the_package(run_dir):
    from aigc_bridge.evaluation import format_report, run_eval

    report = run_eval(run_dir / "texture-mini", prompts_per_set=2, seeds_per_prompt=2, references=24,
                      classifier_per_family=10)
    assert set(report["sets"]) == {"heldout_caption", "heldout_combo", "train"}
    assert report["sets"]["heldout_combo"]["images"] == 4
    assert 0.5 < report["tileability"]["both"]["mean"] < 2.0
    assert 0.5 < report["tileability"]["real"]["mean"] < 2.0  # periodic data at a random offset: no seam
    assert report["references"]["colour_real"] == 1.0
    upscaled = report["upscaled"]
    assert upscaled["size"] == 128 and set(upscaled) >= {"upscaled", "resampled", "real_seam", "pattern_real"}
    assert upscaled["resampled"]["sharpness"] < 0.2  # resampling adds no detail above the 32 px Nyquist frequency
    assert 0.5 < upscaled["upscaled"]["seam"]["mean"] < 2.5
    assert upscaled["resampled"]["block_ratio"] < 1.3  # resampling paints no blocks
    assert set(upscaled["from_real"]) == {"upscaled", "resampled"}  # the toy package has a VAE encoder
    assert "held-out (both sets)" in format_report(report)
    assert "held-out images at 128 px" in format_report(report)
