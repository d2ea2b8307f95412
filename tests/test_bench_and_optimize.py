"""The GPU-speed tooling, as far as a CPU can exercise it: CPU fusions keep parity, and `aigc-bridge bench`
prints its table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aigc_bridge.engine import Pipeline
from aigc_bridge.errors import InvalidRequest
from aigc_bridge.request import GenerateRequest

from .conftest import cli


def test_cpu_fused_export_matches_torch_and_the_plain_package(tiny_sd_src, tiny_sd, tmp_path):
    from aigc_bridge_export.onnx_export import export_pipeline

    out = export_pipeline(tiny_sd_src, tmp_path / "fused", optimize="cpu", seamless=False, log=lambda _m: None)
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["optimization"] == "cpu" and set(manifest["unet"]["graphs"]) == {"none"}
    assert all(n["max_abs_error"] <= n["limit"] for n in manifest["parity"].values())
    req = GenerateRequest("red brick wall", steps=3, seed=2)
    fused = Pipeline.load(out, provider="cpu").generate(req).images[0]
    plain = Pipeline.load(tiny_sd, provider="cpu").generate(req).images[0]
    assert np.max(np.abs(fused - plain)) < 1e-4
    with pytest.raises(InvalidRequest, match="exported without its seamless graphs"):
        Pipeline.load(out, provider="cpu").generate(GenerateRequest("x", steps=1, tile="both"))


def test_bench_prints_its_table(tmp_path):
    proc = cli("bench", "--arch", "tiny", "--size", "64", "--steps", "2", "--batch", "1", "2", "--reps", "1",
               "--work", str(tmp_path), "--out", str(tmp_path / "table.md"))
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-2].endswith("x") and cells[-1].endswith("%"), row  # ratio and fraction of the floor
        assert 0 < float(cells[-1].rstrip("%")) <= 100, row  # a floor our run beats would not be a floor
        assert float(cells[6]) > 0 and float(cells[9]) > 0  # ours and diffusers ms per image
    assert (tmp_path / "table.md").read_text().count("| tiny |") == 2


def test_flops_count_every_step_and_the_text_encoder_once(tiny_sd_src):
    """The one-step trace extrapolated to N steps equals tracing all N steps (CFG on: two prompts, batch 2)."""
    import torch
    from aigc_bridge_export.bench import Workload, count_flops
    from diffusers import DiffusionPipeline
    from torch.utils.flop_counter import FlopCounterMode

    pipe = DiffusionPipeline.from_pretrained(tiny_sd_src, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe("x", num_inference_steps=3, guidance_scale=7.5, height=64, width=64, output_type="np")
    assert count_flops(tiny_sd_src, Workload("tiny", 64, 3, 7.5), 1) == counter.get_total_flops()
