"""IO binding (the GPU path) gives the images of plain runs; it is exercised here on the CPU."""

from __future__ import annotations

import numpy as np

from aigc_bridge.engine import Pipeline
from aigc_bridge.engine.runner import BoundGraphRunner
from aigc_bridge.request import GenerateRequest


def test_io_binding_matches_plain_runs(tiny_sd, sd_pipeline):
    bound = Pipeline.load(tiny_sd, provider="cpu", io_binding=True)
    req = GenerateRequest("red brick wall", steps=3, seed=5, count=2, tile="both")
    a = bound.generate(req)
    b = sd_pipeline.generate(req)
    assert isinstance(bound._runners[bound.manifest["unet"]["graphs"]["both"]], BoundGraphRunner)
    assert np.max(np.abs(np.stack(a.images) - np.stack(b.images))) < 1e-6
