"""Flow-matching Euler (SD 3 / 3.5, FLUX.1) against diffusers' FlowMatchEulerDiscreteScheduler, step by step.

Both sides run the same loop with a deterministic fake velocity model (v = tanh(0.7 x + t / 1000)), with the
schedule each family's diffusers pipeline asks for: SD 3 lets the scheduler space the timesteps (fixed shift);
FLUX.1 passes sigmas linspace(1, 1/n, n) and, for dev, mu = calculate_shift(image tokens) (dynamic shifting).
"""

from __future__ import annotations

import numpy as np
import pytest

from aigc_bridge.engine.flow_match import FlowMatchEulerScheduler, calculate_shift
from aigc_bridge.engine.schedulers import make_scheduler

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 16, 8, 8)
CONFIGS = {
    # stabilityai/stable-diffusion-3.5-medium (and 3-medium): shift 3, no dynamic shifting
    "sd3": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
    # black-forest-labs/FLUX.1-dev: dynamic shifting by resolution
    "flux-dev": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
                 "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                 "max_image_seq_len": 4096},
    # black-forest-labs/FLUX.1-schnell: shift 1, no dynamic shifting
    "flux-schnell": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
                     "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15},
    "linear-shift-terminal": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 2.0,
                              "use_dynamic_shifting": True, "time_shift_type": "linear", "shift_terminal": 0.1},
}


def _run(config: dict, steps: int, flux_sigmas: bool, seq_len: int) -> float:
    ours = make_scheduler("flow_euler", config)
    assert isinstance(ours, FlowMatchEulerScheduler)
    theirs = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    kwargs = {}
    if flux_sigmas:
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    if config.get("use_dynamic_shifting"):
        kwargs["mu"] = ours.mu_for(seq_len)
        assert kwargs["mu"] == calculate_shift(seq_len, config.get("base_image_seq_len", 256),
                                               config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                               config.get("max_shift", 1.15))
    theirs.set_timesteps(steps, **kwargs)
    ours.set_timesteps(steps, **kwargs)
    np.testing.assert_allclose(ours.timesteps, theirs.timesteps.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours.sigmas, theirs.sigmas.numpy(), rtol=0, atol=1e-7)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    y = x.numpy().copy()
    worst = 0.0
    for i, t in enumerate(theirs.timesteps):
        x = theirs.step(torch.tanh(0.7 * x + t / 1000), t, x).prev_sample
        y = ours.step(np.tanh(0.7 * y + ours.timesteps[i] / np.float32(1000)).astype(np.float32), i, y)
        worst = max(worst, float(np.abs(y - x.numpy()).max()))
    return worst


# One step cannot be stretched to a terminal sigma (diffusers divides by zero): that pair is not a case.
@pytest.mark.parametrize(("name", "steps"), [(name, steps) for name in CONFIGS for steps in (1, 2, 4, 28)
                                             if not (CONFIGS[name].get("shift_terminal") and steps == 1)])
def test_step_by_step_matches_diffusers(name, steps):
    config = CONFIGS[name]
    flux = name.startswith("flux")
    for seq_len in ((256, 1024, 4096) if config.get("use_dynamic_shifting") else (1024,)):
        assert _run(config, steps, flux, seq_len) < 1e-5, (name, steps, seq_len)


def test_dynamic_shifting_depends_on_resolution():
    """Larger images spend more of the schedule at high noise (mu grows with the token count)."""
    sched = make_scheduler("flow_euler", CONFIGS["flux-dev"])
    sigmas = {}
    for seq_len in (256, 4096):
        sched.set_timesteps(4, mu=sched.mu_for(seq_len), sigmas=np.linspace(1.0, 0.25, 4))
        sigmas[seq_len] = sched.sigmas.copy()
    assert (sigmas[4096][1:-1] > sigmas[256][1:-1]).all()


def test_dynamic_config_without_mu_is_refused():
    from aigc_bridge.errors import ModelPackageError

    with pytest.raises(ModelPackageError, match="mu"):
        make_scheduler("flow_euler", CONFIGS["flux-dev"]).set_timesteps(4)
