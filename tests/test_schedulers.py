"""The numpy schedulers must reproduce diffusers step by step, since model authors tune against diffusers.

Both sides run the same loop with a deterministic fake UNet (eps = tanh(0.7 x + t / 1000)) and, for the
stochastic schedulers, the same noise: ours gets it as an array, diffusers draws it from a generator seeded
identically (diffusers' randn_tensor is one torch.randn call for a single CPU generator).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from aigc_bridge.engine.schedulers import make_scheduler
from aigc_bridge.errors import InvalidRequest, ModelPackageError
from aigc_bridge.request import SCHEDULERS

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 4, 8, 8)
RTOL = 1e-4

_SD_BETAS = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
}

CONFIGS = {
    # runwayml/stable-diffusion-v1-5, with the timestep_spacing newer exports add.
    "sd15": {
        "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", **_SD_BETAS, "clip_sample": False,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "timestep_spacing": "leading",
    },
    # stabilityai/sd-turbo
    "turbo": {
        "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.24.0.dev0", **_SD_BETAS,
        "clip_sample": False, "interpolation_type": "linear", "prediction_type": "epsilon",
        "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "timestep_spacing": "trailing", "trained_betas": None, "use_karras_sigmas": False,
    },
    # stabilityai/stable-diffusion-2-1 (768, v-prediction): no timestep_spacing, so each class's default.
    "v_pred": {
        "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", **_SD_BETAS, "clip_sample": False,
        "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True,
        "steps_offset": 1, "trained_betas": None,
    },
    # cosine betas, linspace spacing, DDIM clipping on.
    "linspace": {
        "_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000,
        "timestep_spacing": "linspace", "prediction_type": "epsilon", "clip_sample": True,
    },
    # SDXL-style Euler config with Karras sigmas.
    "karras": {
        "_class_name": "EulerDiscreteScheduler", **_SD_BETAS, "timestep_spacing": "leading",
        "steps_offset": 1, "use_karras_sigmas": True, "sigma_min": None, "sigma_max": None,
        "interpolation_type": "linear",
    },
    # zero terminal SNR, linear betas, v-prediction, trailing. sigma_max is ~4096, so steps cancel latents
    # of ~1e4 down to ~1 and float32 rounding alone (on either side) exceeds 1e-4 of the result: its
    # errors are also allowed 16 float32 ulps of the run's largest latent (see _check).
    "zsnr": {
        "_class_name": "DDIMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
        "num_train_timesteps": 1000, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing", "set_alpha_to_one": False, "clip_sample": False,
    },
}
STEPS = (1, 2, 4, 20)
STOCHASTIC = ("euler_a", "lcm")


def diffusers_scheduler(name: str, config: dict):
    """The diffusers scheduler each of our names is defined to match."""
    classes = {
        "euler": (diffusers.EulerDiscreteScheduler, {}),
        "euler_a": (diffusers.EulerAncestralDiscreteScheduler, {}),
        "ddim": (diffusers.DDIMScheduler, {}),
        "pndm": (diffusers.PNDMScheduler, {}),
        "dpmpp_2m": (diffusers.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "dpmpp_2m_karras": (diffusers.DPMSolverMultistepScheduler,
                            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
        "lcm": (diffusers.LCMScheduler, {}),
    }
    cls, overrides = classes[name]
    return cls.from_config(dict(config), **overrides)


def _check(what: str, ours: np.ndarray | float, theirs, errors: list[float], peak: float = 0.0) -> None:
    """Assert max|a - b| <= 1e-4 * max(1, max|b|), the acceptance measure, and record that ratio.

    ``peak`` (only for cancelling runs, see CONFIGS["zsnr"]) adds 16 float32 ulps of it to the bound.
    """
    ref = theirs.detach().cpu().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ref = ref.astype(np.float64)
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    if ours.size == 0:
        return
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    errors.append(err / scale)
    assert err <= RTOL * scale + 16 * np.finfo(np.float32).eps * peak, (what, err / scale)


def _fake_eps_np(x: np.ndarray, t: float) -> np.ndarray:
    return np.tanh(0.7 * x + t / 1000).astype(np.float32)


def _fake_eps_torch(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.tanh(0.7 * x + t / 1000)


def _randn(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def run_pair(name: str, config: dict, steps: int, cancelling: bool = False) -> float | None:
    """Run ours and diffusers side by side; return the worst relative error seen (None: both refuse)."""
    ours = make_scheduler(name, config)
    theirs = diffusers_scheduler(name, config)
    try:
        theirs.set_timesteps(steps)
    except ValueError:
        with pytest.raises(InvalidRequest) as info:
            ours.set_timesteps(steps)
        assert info.value.field == "steps"
        return None
    ours.set_timesteps(steps)

    errors: list[float] = []
    _check("timesteps", ours.timesteps, theirs.timesteps, errors)
    assert ours.timesteps.dtype == np.float32
    if ours.sigmas is not None:
        _check("sigmas", ours.sigmas, theirs.sigmas, errors)
    _check("init_noise_sigma", ours.init_noise_sigma, float(theirs.init_noise_sigma), errors)
    assert ours.stochastic == (name == "euler_a" or (name == "lcm" and len(ours.timesteps) > 1))

    x_theirs = _randn(0) * theirs.init_noise_sigma
    x_ours = _randn(0).numpy() * np.float32(ours.init_noise_sigma)
    peak = 0.0
    for i, t in enumerate(theirs.timesteps):
        in_theirs = theirs.scale_model_input(x_theirs, t)
        in_ours = ours.scale_model_input(x_ours, i)
        if cancelling:
            peak = max(peak, float(x_theirs.abs().max()))
        _check(f"scale_model_input {i}", in_ours, in_theirs, errors, peak)

        eps_theirs = _fake_eps_torch(in_theirs, float(t))
        eps_ours = _fake_eps_np(in_ours, float(ours.timesteps[i]))
        seed = 1000 + i
        noise = _randn(seed).numpy() if ours.stochastic else None
        kwargs = {"generator": torch.Generator().manual_seed(seed)} if name in STOCHASTIC else {}
        x_theirs = theirs.step(eps_theirs, t, x_theirs, **kwargs).prev_sample
        x_ours = ours.step(eps_ours, i, x_ours, noise)
        assert x_ours.dtype == np.float32
        if not torch.isfinite(x_theirs).all():
            # diffusers' Euler ancestral takes the square root of a rounding-negative number when sigma_max
            # is huge (cosine betas); ours caps sigma_up like k-diffusion and stays finite.
            assert name == "euler_a" and np.isfinite(x_ours).all()
            return max(errors)
        _check(f"step {i}", x_ours, x_theirs, errors, peak)
    assert np.isfinite(x_ours).all()
    return max(errors)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", SCHEDULERS)
def test_matches_diffusers(name: str, config: str, steps: int) -> None:
    run_pair(name, CONFIGS[config], steps, cancelling=config == "zsnr")


VARIANTS = [
    ("dpmpp_2m", {"final_sigmas_type": "sigma_min"}),
    ("dpmpp_2m", {"final_sigmas_type": "sigma_min", "euler_at_final": True}),
    ("dpmpp_2m", {"solver_type": "heun", "lower_order_final": False}),
    ("dpmpp_2m_karras", {"sigma_min": 0.1, "sigma_max": 10.0, "prediction_type": "sample"}),
    ("dpmpp_2m_karras", {"final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"}),
    # dpmpp_2m follows the config: Karras where it asks, every spacing, clipped log-SNR on cosine betas.
    ("dpmpp_2m", {"use_karras_sigmas": True}),
    ("dpmpp_2m", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    ("dpmpp_2m", {"timestep_spacing": "linspace"}),
    ("dpmpp_2m", {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}),
    ("pndm", {"skip_prk_steps": False}),
    ("pndm", {"skip_prk_steps": False, "prediction_type": "v_prediction", "set_alpha_to_one": True}),
    ("pndm", {"timestep_spacing": "trailing", "steps_offset": 0}),
    ("pndm", {"timestep_spacing": "linspace", "prediction_type": "v_prediction"}),
    ("euler", {"final_sigmas_type": "sigma_min", "prediction_type": "sample"}),
    ("euler", {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0, "steps_offset": 0}),
    ("ddim", {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 2.0}),
    ("ddim", {"set_alpha_to_one": True, "timestep_spacing": "trailing"}),
    ("lcm", {"original_inference_steps": 20, "timestep_scaling": 5.0, "prediction_type": "v_prediction"}),
    ("lcm", {"clip_sample": True, "set_alpha_to_one": False}),
]


@pytest.mark.parametrize("steps", [4, 20])
@pytest.mark.parametrize(("name", "overrides"), VARIANTS)
def test_config_variants(name: str, overrides: dict, steps: int) -> None:
    """Less common config keys each scheduler honours (final sigma, solver type, clipping...)."""
    assert run_pair(name, {**CONFIGS["sd15"], **overrides}, steps) is not None


@pytest.mark.parametrize("name", SCHEDULERS)
def test_defaults_follow_from_config(name: str) -> None:
    """Keys diffusers recorded as defaulted, and keys of other classes, must not leak into the target."""
    config = {**CONFIGS["turbo"], "_use_default_values": ["timestep_spacing", "steps_offset"],
              "solver_order": 3, "original_inference_steps": 20}
    assert run_pair(name, config, 4) is not None


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "trained", "zsnr"])
def test_noise_schedules(schedule: str) -> None:
    config = {"num_train_timesteps": 1000, "beta_schedule": schedule}
    if schedule == "trained":
        config["trained_betas"] = np.linspace(1e-4, 0.03, 1000).tolist()
    if schedule == "zsnr":
        config.update(_SD_BETAS, rescale_betas_zero_snr=True)
    for name in ("ddim", "euler"):  # euler also pins the zero-SNR end to 2**-24
        ours = make_scheduler(name, config).alphas_cumprod
        theirs = diffusers_scheduler(name, config).alphas_cumprod.numpy()
        assert ours.dtype == np.float32
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_trailing_spacing_keeps_the_requested_count() -> None:
    """diffusers' trailing arange yields a bogus 62nd timestep, -1, for 61 steps; we keep 61 valid ones."""
    for name in ("euler", "ddim"):
        sched = make_scheduler(name, CONFIGS["turbo"])
        sched.set_timesteps(61)
        assert len(sched.timesteps) == 61 and sched.timesteps.min() >= 0
        reference = diffusers_scheduler(name, CONFIGS["turbo"])
        reference.set_timesteps(61)
        np.testing.assert_array_equal(sched.timesteps, reference.timesteps.numpy()[:61].astype(np.float32))


def test_unknown_scheduler() -> None:
    with pytest.raises(InvalidRequest) as info:
        make_scheduler("heun", CONFIGS["sd15"])
    assert info.value.field == "scheduler"


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5, True])
def test_bad_steps(name: str, steps) -> None:
    sched = make_scheduler(name, CONFIGS["sd15"])
    with pytest.raises(InvalidRequest) as info:
        sched.set_timesteps(steps)
    assert info.value.field == "steps"


def test_lcm_steps_limited_by_original_inference_steps() -> None:
    config = {**CONFIGS["sd15"], "original_inference_steps": 8}
    with pytest.raises(ValueError):
        diffusers_scheduler("lcm", config).set_timesteps(9)
    sched = make_scheduler("lcm", config)
    with pytest.raises(InvalidRequest) as info:
        sched.set_timesteps(9)
    assert info.value.field == "steps"
    sched.set_timesteps(8)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_missing_noise(name: str) -> None:
    sched = make_scheduler(name, CONFIGS["sd15"])
    sched.set_timesteps(4)
    x = np.ones(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="noise"):
        sched.step(x, 0, x)
    assert np.isfinite(sched.step(x, 3, x)).all()  # the last step adds no noise


def test_dpm_restarts_after_set_timesteps() -> None:
    """The multistep history must not leak from one run into the next."""
    sched = make_scheduler("dpmpp_2m", CONFIGS["sd15"])
    x = _randn(3).numpy()
    results = []
    for _ in range(2):
        sched.set_timesteps(4)
        y = x
        for i in range(4):
            y = sched.step(_fake_eps_np(y, float(sched.timesteps[i])), i, y)
        results.append(y)
    np.testing.assert_array_equal(results[0], results[1])


def test_runtime_module_has_no_torch() -> None:
    code = ("import sys, aigc_bridge.engine.schedulers; "
            "bad = {'torch', 'diffusers'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_unsupported_config_is_a_package_error(name: str) -> None:
    with pytest.raises(ModelPackageError):
        make_scheduler(name, {"beta_schedule": "sigmoid"})


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("config", ["sd15", "turbo", "v_pred"])
def test_add_noise_matches_diffusers(name: str, config: str) -> None:
    """Image to image starts from add_noise at the first kept step; 4-channel inpainting blends at the next."""
    ours, theirs = make_scheduler(name, CONFIGS[config]), diffusers_scheduler(name, CONFIGS[config])
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    sample, noise = _randn(1), _randn(2)
    for index in (0, 3, len(ours.timesteps) - 1):
        if hasattr(theirs, "set_begin_index"):  # as get_timesteps does; the index then names the step
            theirs.set_begin_index(index)
            theirs._step_index = None
        expected = theirs.add_noise(sample, noise, theirs.timesteps[index:index + 1]).numpy()
        got = ours.add_noise(sample.numpy(), noise.numpy(), index)
        assert np.max(np.abs(got - expected)) <= 1e-5 * max(1.0, float(np.max(np.abs(expected)))), (name, index)
