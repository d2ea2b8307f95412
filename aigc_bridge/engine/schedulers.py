"""Numpy ports of the diffusers schedulers the engine offers (euler, euler_a, ddim, pndm, dpmpp_2m
(+ Karras), lcm).

The runtime has no torch, and diffusers' schedulers only run on torch tensors, so their math is
re-implemented here. "Correct" means "what ``DiffusersClass.from_config(model_config)`` computes": the same
timesteps, the same float32 arithmetic (float64 where diffusers itself goes through numpy float64), so a
model behaves as its authors tuned it. ``tests/test_schedulers.py`` checks every scheduler step by step
against diffusers.

Unlike diffusers, the caller passes the step index (no timestep lookup, so repeated timesteps are harmless)
and supplies the noise of stochastic schedulers (drawn from per-image RNGs, so a batch is reproducible
image by image).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidRequest, ModelPackageError
from ..request import FLOW_SCHEDULERS, SCHEDULERS

_ONE = np.float32(1.0)
_PREDICTIONS = ("epsilon", "v_prediction", "sample")
_SPACINGS = ("linspace", "leading", "trailing")

# Keys shared by every scheduler class below, with the defaults of their __init__ signatures.
_COMMON = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}


def _read_config(config: dict, defaults: dict, **overrides: Any) -> dict:
    """Pick the keys the target class knows, as diffusers' ``from_config`` does.

    Keys listed in ``_use_default_values`` were never really set (diffusers wrote its own defaults), so
    they fall back to the target class's defaults too.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ModelPackageError("the scheduler config must be a JSON object", "scheduler")
    unset = set(config.get("_use_default_values") or ())
    values = {k: config[k] if k in config and k not in unset else v for k, v in defaults.items()}
    values.update(overrides)
    return values


def _hidden(config: dict | None, key: str) -> Any:
    """A config value the target class does not take but diffusers still exposes on its config."""
    if not config or key in (config.get("_use_default_values") or ()):
        return None
    return config.get(key)


def _unsupported(what: str) -> ModelPackageError:
    return ModelPackageError(f"the model's scheduler config uses {what}, which is not supported", "scheduler")


def _require(cfg: dict, key: str, allowed: tuple) -> None:
    """Refuse config values we do not implement up front, rather than mid-run."""
    if cfg[key] not in allowed:
        raise _unsupported(f"{key} {cfg[key]!r}")


def _cumprod(values: np.ndarray) -> np.ndarray:
    """float32 cumulative product accumulated in float64, as torch.cumprod does on CPU (bit for bit).

    numpy's float32 accumulator differs in the last bits, enough to reorder the tiny, non-monotonic tail of
    zero-SNR schedules.
    """
    return np.cumprod(values.astype(np.float64)).astype(np.float32)


def _betas_for_alpha_bar(n: int, max_beta: float = 0.999) -> np.ndarray:
    """The Glide cosine schedule, computed in python floats like diffusers."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.asarray(betas, dtype=np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(alphas_cumprod) so the last timestep is pure noise (arXiv 2305.08891)."""
    root = np.sqrt(_cumprod(_ONE - betas))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    bar = root * root
    alphas = np.concatenate([bar[:1], bar[1:] / bar[:-1]])
    return _ONE - alphas


def _alphas_cumprod(cfg: dict, pin_last: bool) -> np.ndarray:
    """float32 alphas_cumprod of the training noise schedule.

    ``pin_last``: the sigma-based classes set the zero-SNR last value to 2**-24 so that sigma stays finite.
    """
    n = int(cfg["num_train_timesteps"])
    schedule = cfg["beta_schedule"]
    if cfg["trained_betas"] is not None:
        betas = np.asarray(cfg["trained_betas"], dtype=np.float32)
    elif schedule == "linear":
        betas = np.linspace(cfg["beta_start"], cfg["beta_end"], n).astype(np.float32)
    elif schedule == "scaled_linear":
        root = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n).astype(np.float32)
        betas = root * root
    elif schedule == "squaredcos_cap_v2":
        betas = _betas_for_alpha_bar(n)
    else:
        raise _unsupported(f"beta_schedule {schedule!r}")
    if cfg["rescale_betas_zero_snr"]:
        betas = _rescale_zero_terminal_snr(betas)
    alphas_cumprod = _cumprod(_ONE - betas)
    if cfg["rescale_betas_zero_snr"] and pin_last:
        alphas_cumprod[-1] = 2.0**-24
    return alphas_cumprod


def _spaced_timesteps(spacing: str, n_train: int, n: int, offset: int, round_linspace: bool) -> np.ndarray:
    """Timesteps (float64, descending) for a timestep_spacing, per table 2 of arXiv 2305.08891."""
    if spacing == "linspace":
        ts = np.linspace(0, n_train - 1, n)
        if round_linspace:
            ts = ts.round()
        return ts[::-1].copy()
    if spacing == "leading":
        return (np.arange(n) * (n_train // n)).round()[::-1] + offset
    if spacing == "trailing":
        # For some n (61, 103, ...) float error gives diffusers one extra timestep, -1, that indexes the
        # schedule from its end; we keep the n that were asked for.
        return np.arange(n_train, 0, -n_train / n).round()[:n] - 1
    raise _unsupported(f"timestep_spacing {spacing!r}")


def _sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of arbitrary sigmas, by linear interpolation in log sigma."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma[np.newaxis, :] - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    # A sigma that is a table entry (the Karras end points are) maps to that entry's index exactly.
    # diffusers leaves that to float64-vs-float32 log rounding, which sends sigma_max to 998.99999
    # (truncated to 998 for cosine betas) or, on the non-monotonic zero-SNR tail, to ~995.
    close = np.abs(dists) <= 2e-6
    last_close = close.shape[0] - 1 - np.argmax(close[::-1], axis=0)
    return np.where(close.any(axis=0), last_close, t)


def _karras(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """The rho = 7 sigma ramp of Karras et al. 2022 (float64)."""
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def _as_f32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


class Scheduler:
    """What the denoising loop drives; subclasses mirror one diffusers class each.

    ``order`` is the number of model evaluations per step, as diffusers' class attribute (1 for all five).
    """

    name = ""
    order = 1
    stochastic = False  # True when step() takes noise (the caller owns the RNGs)
    # True: image to image passes strength to set_timesteps (LCM) instead of cutting the schedule's start
    schedule_strength = False
    init_noise_sigma = 1.0
    cfg: dict

    def __init__(self, config: dict) -> None:
        self.timesteps = np.zeros(0, dtype=np.float32)
        self.sigmas: np.ndarray | None = None
        self.num_inference_steps = 0

    def _check_steps(self, num_inference_steps: int) -> int:
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise InvalidRequest(f"steps must be an integer, got {type(n).__name__}", "steps")
        if n < 1:
            raise InvalidRequest(f"steps must be at least 1, got {n}", "steps")
        limit = int(self.cfg["num_train_timesteps"])
        if n > limit:
            raise InvalidRequest(
                f"steps must be at most {limit} (the model's training timesteps) for {self.name}, got {n}",
                "steps",
            )
        return int(n)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Compute the schedule for a run; also forgets any state of a previous run."""
        raise NotImplementedError

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        """Only the sigma-parameterised (Euler) schedulers rescale the UNet input."""
        self._check_index(step_index)
        return sample

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """Return the less noisy sample for step ``step_index``; computed in float32 whatever the inputs."""
        raise NotImplementedError

    def add_noise(self, sample: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        """``sample`` noised to the level of timestep ``step_index`` (diffusers' ``add_noise`` at that step):
        image to image starts there, and inpainting with a 4-channel UNet blends the known region back at it."""
        t = int(self.timesteps[self._check_index(step_index)])
        alpha = self.alphas_cumprod[t]
        return np.sqrt(alpha) * _as_f32(sample) + np.sqrt(_ONE - alpha) * _as_f32(noise)

    def _check_index(self, step_index: int) -> int:
        if not 0 <= step_index < len(self.timesteps):
            raise ValueError(
                f"step_index {step_index} is outside 0..{len(self.timesteps) - 1}; set_timesteps first?"
            )
        return int(step_index)

    @staticmethod
    def _noise(noise: np.ndarray | None, sample: np.ndarray) -> np.ndarray:
        if noise is None:
            raise ValueError("this step adds noise: pass `noise` (unit normal, shaped like the sample)")
        if noise.shape != sample.shape:
            raise ValueError(f"noise shape {noise.shape} differs from the sample's {sample.shape}")
        return _as_f32(noise)

    def _x0(self, model_output: np.ndarray, sample: np.ndarray, alpha_prod: np.float32) -> np.ndarray:
        """x0 from the model output in the alphas_cumprod parameterisation (DDIM, LCM)."""
        pred = self.cfg["prediction_type"]
        sqrt_a, sqrt_b = np.sqrt(alpha_prod), np.sqrt(_ONE - alpha_prod)
        if pred == "epsilon":
            return (sample - sqrt_b * model_output) / sqrt_a
        if pred == "sample":
            return model_output
        if pred == "v_prediction":
            return sqrt_a * sample - sqrt_b * model_output
        raise _unsupported(f"prediction_type {pred!r}")


class _SigmaScheduler(Scheduler):
    """Shared part of Euler and Euler ancestral: k-diffusion sigmas, scaled model input."""

    def _init_schedule(self) -> None:
        _require(self.cfg, "prediction_type", _PREDICTIONS)
        _require(self.cfg, "timestep_spacing", _SPACINGS)
        self.alphas_cumprod = _alphas_cumprod(self.cfg, pin_last=True)
        self._train_sigmas = np.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)

    def _finish(self, timesteps: np.ndarray, sigmas: np.ndarray, sigma_last: float) -> None:
        self.timesteps = _as_f32(timesteps)
        self.sigmas = _as_f32(np.concatenate([sigmas, [sigma_last]]))
        max_sigma = self.sigmas.max()
        leading = self.cfg["timestep_spacing"] not in ("linspace", "trailing")
        self.init_noise_sigma = float(np.sqrt(max_sigma * max_sigma + _ONE) if leading else max_sigma)

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        """The UNet was trained on unit-variance inputs; x = x0 + sigma * eps has variance sigma^2 + 1."""
        sigma = self.sigmas[self._check_index(step_index)]
        return _as_f32(sample) / np.sqrt(sigma * sigma + _ONE)

    def add_noise(self, sample: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        """x + sigma * eps: the k-diffusion form (no rescaling; scale_model_input does that)."""
        return _as_f32(sample) + _as_f32(noise) * self.sigmas[self._check_index(step_index)]

    def _denoised(self, model_output: np.ndarray, sample: np.ndarray, sigma: np.float32) -> np.ndarray:
        pred = self.cfg["prediction_type"]
        if pred == "epsilon":
            return sample - sigma * model_output
        if pred == "v_prediction":
            return model_output * (-sigma / np.sqrt(sigma * sigma + _ONE)) + sample / (sigma * sigma + _ONE)
        return model_output


class EulerScheduler(_SigmaScheduler):
    """EulerDiscreteScheduler: the deterministic first-order k-diffusion sampler."""

    name = "euler"

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.cfg = _read_config(config, {
            **_COMMON,
            "timestep_spacing": "linspace",
            "interpolation_type": "linear",
            "use_karras_sigmas": False,
            "use_exponential_sigmas": False,
            "use_beta_sigmas": False,
            "sigma_min": None,
            "sigma_max": None,
            "timestep_type": "discrete",
            "final_sigmas_type": "zero",
        })
        cfg = self.cfg
        if cfg["use_exponential_sigmas"] or cfg["use_beta_sigmas"]:
            raise _unsupported("exponential or beta sigmas")
        if cfg["interpolation_type"] != "linear":
            raise _unsupported(f"interpolation_type {cfg['interpolation_type']!r}")
        if cfg["timestep_type"] == "continuous" and cfg["prediction_type"] == "v_prediction":
            raise _unsupported("continuous (EDM) timesteps")
        _require(cfg, "final_sigmas_type", ("zero", "sigma_min"))
        self._init_schedule()

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        cfg = self.cfg
        timesteps = _spaced_timesteps(cfg["timestep_spacing"], int(cfg["num_train_timesteps"]), n,
                                      int(cfg["steps_offset"]), round_linspace=False).astype(np.float32)
        train = self._train_sigmas
        sigmas = np.interp(timesteps, np.arange(len(train)), train)
        if cfg["use_karras_sigmas"]:
            lo = cfg["sigma_min"] if cfg["sigma_min"] is not None else sigmas[-1].item()
            hi = cfg["sigma_max"] if cfg["sigma_max"] is not None else sigmas[0].item()
            sigmas = _karras(lo, hi, n)
            timesteps = _sigma_to_t(sigmas, np.log(train))
        last = train[0] if cfg["final_sigmas_type"] == "sigma_min" else 0.0
        self.num_inference_steps = n
        self._finish(timesteps, sigmas, last)

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """One Euler step along the probability-flow ODE (no churn, like diffusers' defaults)."""
        i = self._check_index(step_index)
        sample, model_output = _as_f32(sample), _as_f32(model_output)
        sigma = self.sigmas[i]
        derivative = (sample - self._denoised(model_output, sample, sigma)) / sigma
        return sample + derivative * (self.sigmas[i + 1] - sigma)


class EulerAncestralScheduler(_SigmaScheduler):
    """EulerAncestralDiscreteScheduler: Euler to sigma_down, then fresh noise back up to sigma_to."""

    name = "euler_a"
    stochastic = True

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.cfg = _read_config(config, {**_COMMON, "timestep_spacing": "linspace"})
        self._init_schedule()

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        cfg = self.cfg
        timesteps = _spaced_timesteps(cfg["timestep_spacing"], int(cfg["num_train_timesteps"]), n,
                                      int(cfg["steps_offset"]), round_linspace=False).astype(np.float32)
        train = self._train_sigmas
        self.num_inference_steps = n
        self._finish(timesteps, np.interp(timesteps, np.arange(len(train)), train), 0.0)

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """Ancestral step; ``noise`` is needed on every step but the last (whose sigma_up is 0)."""
        i = self._check_index(step_index)
        sample, model_output = _as_f32(sample), _as_f32(model_output)
        sigma, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        denoised = self._denoised(model_output, sample, sigma)
        sigma_up = np.sqrt(sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma))
        # Capped as in k-diffusion: with a huge sigma_max (cosine betas) rounding can push sigma_up past
        # sigma_to, and diffusers' sigma_down becomes NaN.
        sigma_up = np.minimum(sigma_up, sigma_to)
        sigma_down = np.sqrt(sigma_to * sigma_to - sigma_up * sigma_up)
        prev = sample + (sample - denoised) / sigma * (sigma_down - sigma)
        if sigma_up != 0:
            prev = prev + self._noise(noise, sample) * sigma_up
        return prev


class DDIMScheduler(Scheduler):
    """DDIMScheduler with eta = 0 (deterministic)."""

    name = "ddim"

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.cfg = _read_config(config, {
            **_COMMON,
            "timestep_spacing": "leading",
            "clip_sample": True,
            "clip_sample_range": 1.0,
            "set_alpha_to_one": True,
            "thresholding": False,
        })
        cfg = self.cfg
        if cfg["thresholding"]:
            raise _unsupported("dynamic thresholding")
        _require(cfg, "prediction_type", _PREDICTIONS)
        _require(cfg, "timestep_spacing", _SPACINGS)
        self.alphas_cumprod = _alphas_cumprod(cfg, pin_last=False)
        self.final_alpha_cumprod = _ONE if cfg["set_alpha_to_one"] else self.alphas_cumprod[0]
        self._steps = np.zeros(0, dtype=np.int64)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        cfg = self.cfg
        n_train = int(cfg["num_train_timesteps"])
        steps = _spaced_timesteps(cfg["timestep_spacing"], n_train, n, int(cfg["steps_offset"]),
                                  round_linspace=True).astype(np.int64)
        if steps.max() >= n_train or steps.min() < 0:
            raise InvalidRequest(f"{n} steps with this model's steps_offset fall outside its "
                                 f"{n_train} training timesteps", "steps")
        self._steps = steps
        self.timesteps = steps.astype(np.float32)
        self.num_inference_steps = n

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """Formula (12) of the DDIM paper with sigma_t = 0."""
        i = self._check_index(step_index)
        sample, model_output = _as_f32(sample), _as_f32(model_output)
        t = int(self._steps[i])
        # diffusers steps back by a fixed stride, even where the spacing is not evenly strided.
        prev_t = t - int(self.cfg["num_train_timesteps"]) // self.num_inference_steps
        alpha = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0 = self._x0(model_output, sample, alpha)
        pred = self.cfg["prediction_type"]
        if pred == "epsilon":
            eps = model_output
        elif pred == "sample":
            eps = (sample - np.sqrt(alpha) * x0) / np.sqrt(_ONE - alpha)
        else:
            eps = np.sqrt(alpha) * model_output + np.sqrt(_ONE - alpha) * sample
        if self.cfg["clip_sample"]:
            limit = float(self.cfg["clip_sample_range"])
            x0 = np.clip(x0, -limit, limit)
        return np.sqrt(alpha_prev) * x0 + np.sqrt(_ONE - alpha_prev) * eps


class PNDMScheduler(Scheduler):
    """PNDMScheduler (SD 1.x's own): pseudo linear multistep (PLMS), with the Runge-Kutta warm-up unless the
    config skips it (``skip_prk_steps``, as SD's does).

    State is counted in steps run since ``set_timesteps``, as diffusers' ``counter`` is, so a run that starts
    mid-schedule (image to image) warms up the same way. PLMS evaluates the model once more than the steps
    asked for (one timestep is repeated); PRK adds the four-stage warm-up's evaluations.
    """

    name = "pndm"

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        # PNDM's __init__ takes no rescale_betas_zero_snr: a zero-SNR config keeps its plain betas here.
        common = {k: v for k, v in _COMMON.items() if k != "rescale_betas_zero_snr"}
        self.cfg = _read_config(config, {**common, "skip_prk_steps": False, "set_alpha_to_one": False,
                                         "timestep_spacing": "leading"})
        cfg = self.cfg
        cfg["rescale_betas_zero_snr"] = False
        _require(cfg, "prediction_type", ("epsilon", "v_prediction"))
        _require(cfg, "timestep_spacing", _SPACINGS)
        self.alphas_cumprod = _alphas_cumprod(cfg, pin_last=False)
        self.final_alpha_cumprod = _ONE if cfg["set_alpha_to_one"] else self.alphas_cumprod[0]
        self._steps = np.zeros(0, dtype=np.int64)
        self._prk_count = 0
        self._reset()

    def _reset(self) -> None:
        self._counter = 0
        self._ets: list[np.ndarray] = []
        self._cur_sample: np.ndarray | None = None
        self._cur_output: np.ndarray | float = 0.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        n_train = int(self.cfg["num_train_timesteps"])
        ascending = _spaced_timesteps(self.cfg["timestep_spacing"], n_train, n, int(self.cfg["steps_offset"]),
                                      round_linspace=True)[::-1].astype(np.int64)
        if self.cfg["skip_prk_steps"]:
            prk = np.zeros(0, dtype=np.int64)
            plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        else:
            if n < 4:
                raise InvalidRequest(f"steps must be at least 4 for pndm with this model (its Runge-Kutta "
                                     f"warm-up takes 4), got {n}", "steps")
            prk = ascending[-4:].repeat(2) + np.tile(np.array([0, n_train // n // 2]), 4)
            prk = prk[:-1].repeat(2)[1:-1][::-1]
            plms = ascending[:-3][::-1]
        self._steps = np.concatenate([prk, plms]).astype(np.int64)
        if self._steps.max() >= n_train or self._steps.min() < 0:
            raise InvalidRequest(f"{n} steps with this model's steps_offset fall outside its "
                                 f"{n_train} training timesteps", "steps")
        self._prk_count = len(prk)
        self.timesteps = self._steps.astype(np.float32)
        self.num_inference_steps = n
        self._reset()

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        i = self._check_index(step_index)
        sample, model_output = _as_f32(sample), _as_f32(model_output)
        t = int(self._steps[i])
        if self._counter < self._prk_count:
            prev = self._step_prk(model_output, t, sample)
        else:
            prev = self._step_plms(model_output, t, sample)
        self._counter += 1
        return prev

    def _step_prk(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        """Fourth-order Runge-Kutta over four model evaluations per stage."""
        counter = self._counter
        half = int(self.cfg["num_train_timesteps"]) // self.num_inference_steps // 2
        prev_t = t - (0 if counter % 2 else half)
        t = int(self._steps[counter // 4 * 4])
        stage = counter % 4
        if stage == 0:
            self._cur_output = self._cur_output + np.float32(1 / 6) * model_output
            self._ets.append(model_output)
            self._cur_sample = sample
        elif stage in (1, 2):
            self._cur_output = self._cur_output + np.float32(1 / 3) * model_output
        else:
            model_output = self._cur_output + np.float32(1 / 6) * model_output
            self._cur_output = 0.0
        base = self._cur_sample if self._cur_sample is not None else sample
        return self._prev_sample(base, t, prev_t, model_output)

    def _step_plms(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        """Linear multistep over the last four model outputs (Adams-Bashforth weights)."""
        stride = int(self.cfg["num_train_timesteps"]) // self.num_inference_steps
        prev_t = t - stride
        if self._counter != 1:
            self._ets = [*self._ets[-3:], model_output]
        else:
            prev_t, t = t, t + stride
        ets = self._ets
        if len(ets) == 1 and self._counter == 0:
            self._cur_sample = sample
        elif len(ets) == 1 and self._counter == 1:
            model_output = (model_output + ets[-1]) / np.float32(2)
            sample, self._cur_sample = self._cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / np.float32(2)
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / np.float32(12)
        else:
            model_output = np.float32(1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        return self._prev_sample(sample, t, prev_t, model_output)

    def _prev_sample(self, sample: np.ndarray, t: int, prev_t: int, model_output: np.ndarray) -> np.ndarray:
        """Formula (9) of the PNDM paper."""
        alpha = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta, beta_prev = _ONE - alpha, _ONE - alpha_prev
        if self.cfg["prediction_type"] == "v_prediction":
            model_output = np.sqrt(alpha) * model_output + np.sqrt(beta) * sample
        sample_coeff = np.sqrt(alpha_prev / alpha)
        denom = alpha * np.sqrt(beta_prev) + np.sqrt(alpha * beta * alpha_prev)
        return sample_coeff * sample - (alpha_prev - alpha) * model_output / denom


class DPMSolverMultistepScheduler(Scheduler):
    """DPM-Solver++(2M): second order by reusing the previous step's x0.

    The sigmas follow the config (``use_karras_sigmas``, timestep_spacing), as diffusers' class does;
    ``karras=True`` (the ``dpmpp_2m_karras`` choice) forces the Karras ramp whatever the config says.
    """

    name = "dpmpp_2m"

    def __init__(self, config: dict, karras: bool = False) -> None:
        super().__init__(config)
        self.cfg = _read_config(config, {
            **_COMMON,
            "timestep_spacing": "linspace",
            "use_karras_sigmas": False,
            "solver_type": "midpoint",
            "lower_order_final": True,
            "euler_at_final": False,
            "use_exponential_sigmas": False,
            "use_beta_sigmas": False,
            "use_lu_lambdas": False,
            "use_flow_sigmas": False,
            "final_sigmas_type": "zero",
            "lambda_min_clipped": -math.inf,
            "variance_type": None,
            "thresholding": False,
        }, algorithm_type="dpmsolver++", solver_order=2)
        cfg = self.cfg
        if karras:
            cfg["use_karras_sigmas"] = True
            self.name = "dpmpp_2m_karras"
        if cfg["use_exponential_sigmas"] or cfg["use_beta_sigmas"] or cfg["use_lu_lambdas"]:
            raise _unsupported("exponential, beta or Lu lambda sigmas")
        if cfg["use_flow_sigmas"]:
            raise _unsupported("flow-matching sigmas")
        if cfg["thresholding"] or cfg["variance_type"] is not None:
            raise _unsupported("dynamic thresholding or a learned variance")
        _require(cfg, "prediction_type", _PREDICTIONS)
        _require(cfg, "timestep_spacing", _SPACINGS)
        if cfg["solver_type"] in ("logrho", "bh1", "bh2"):
            cfg["solver_type"] = "midpoint"  # what diffusers substitutes for these UniPC/DEIS names
        _require(cfg, "solver_type", ("midpoint", "heun"))
        _require(cfg, "final_sigmas_type", ("zero", "sigma_min"))
        self._sigma_min = _hidden(config, "sigma_min")
        self._sigma_max = _hidden(config, "sigma_max")
        self.alphas_cumprod = _alphas_cumprod(cfg, pin_last=True)
        self._prev: tuple[int, np.ndarray] | None = None

    def _last_timestep(self) -> int:
        """Training timesteps above ``lambda_min_clipped`` (all of them by default): cosine schedules clip
        the noisiest, whose log-SNR is unstable."""
        ac = self.alphas_cumprod
        lambda_t = np.log(np.sqrt(ac)) - np.log(np.sqrt(_ONE - ac))
        clipped = int(np.searchsorted(lambda_t[::-1], np.float32(self.cfg["lambda_min_clipped"]), side="left"))
        return int(self.cfg["num_train_timesteps"]) - clipped

    def _spaced(self, n: int) -> np.ndarray:
        """diffusers' DPM spacing: n + 1 points, the last (t = 0) dropped."""
        cfg = self.cfg
        last = self._last_timestep()
        spacing = cfg["timestep_spacing"]
        if spacing == "linspace":
            return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        if spacing == "leading":
            ratio = last // (n + 1)
            return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + int(cfg["steps_offset"])
        ratio = int(cfg["num_train_timesteps"]) / n
        return np.arange(last, 0, -ratio).round()[:n].astype(np.int64) - 1

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        ac = self.alphas_cumprod
        train = np.sqrt((1 - ac) / ac)
        if self.cfg["use_karras_sigmas"]:
            lo = self._sigma_min if self._sigma_min is not None else train[0].item()
            hi = self._sigma_max if self._sigma_max is not None else train[-1].item()
            sigmas = _karras(lo, hi, n)
            timesteps = _sigma_to_t(sigmas, np.log(train))
            if self.cfg["beta_schedule"] != "squaredcos_cap_v2":
                timesteps = timesteps.round()
            timesteps = timesteps.astype(np.int64)
        else:
            timesteps = self._spaced(n)
            if timesteps.min() < 0 or timesteps.max() >= len(train):
                raise InvalidRequest(f"{n} steps with this model's spacing fall outside its training timesteps",
                                     "steps")
            sigmas = np.interp(timesteps, np.arange(len(train)), train)
        self.timesteps = timesteps.astype(np.float32)
        last = train[0] if self.cfg["final_sigmas_type"] == "sigma_min" else 0.0
        self.sigmas = _as_f32(np.concatenate([sigmas, [last]]))
        self.num_inference_steps = n
        self._prev = None

    def add_noise(self, sample: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        """alpha_t x + sigma_t eps at the step's sigma, as diffusers' multistep ``add_noise``."""
        sigma = self.sigmas[self._check_index(step_index)]
        alpha_t = _ONE / np.sqrt(sigma * sigma + _ONE)
        return alpha_t * _as_f32(sample) + (sigma * alpha_t) * _as_f32(noise)

    @staticmethod
    def _alpha_sigma_lambda(sigma: np.float32) -> tuple[np.float32, np.float32, np.float32]:
        """VP alpha_t, sigma_t and the half log-SNR lambda_t of a k-diffusion sigma."""
        alpha = _ONE / np.sqrt(sigma * sigma + _ONE)
        sigma_t = sigma * alpha
        with np.errstate(divide="ignore"):  # sigma 0 at the end: lambda = +inf, as in diffusers
            return alpha, sigma_t, np.log(alpha) - np.log(sigma_t)

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """First order on the first and final steps, second order (midpoint or Heun) in between."""
        i = self._check_index(step_index)
        sample, model_output = _as_f32(sample), _as_f32(model_output)
        cfg = self.cfg
        n = len(self.timesteps)
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(self.sigmas[i])
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.sigmas[i + 1])
        pred = cfg["prediction_type"]
        if pred == "epsilon":
            x0 = (sample - sigma_s0 * model_output) / alpha_s0
        elif pred == "v_prediction":
            x0 = alpha_s0 * sample - sigma_s0 * model_output
        else:
            x0 = model_output
        prev, self._prev = self._prev, (i, x0)
        lower_final = i == n - 1 and (
            cfg["euler_at_final"]
            or (cfg["lower_order_final"] and n < 15)
            or cfg["final_sigmas_type"] == "zero"
        )
        h = lambda_t - lambda_s0
        phi = alpha_t * (np.exp(-h) - _ONE)
        # A run resumed mid-schedule (or the first step) has no previous x0: first order, like diffusers.
        if prev is None or prev[0] != i - 1 or lower_final:
            return (sigma_t / sigma_s0) * sample - phi * x0
        _, _, lambda_s1 = self._alpha_sigma_lambda(self.sigmas[i - 1])
        # h is 0 on a sigma_min -> sigma_min final step; torch then quietly yields D1 = 0 (midpoint).
        with np.errstate(divide="ignore", invalid="ignore"):
            r0 = (lambda_s0 - lambda_s1) / h
            d1 = (_ONE / r0) * (x0 - prev[1])
            if cfg["solver_type"] == "midpoint":
                return (sigma_t / sigma_s0) * sample - phi * x0 - np.float32(0.5) * phi * d1
            heun = alpha_t * ((np.exp(-h) - _ONE) / h + _ONE)
            return (sigma_t / sigma_s0) * sample - phi * x0 + heun * d1


class LCMScheduler(Scheduler):
    """LCMScheduler: consistency-model steps (denoise, then re-noise to the next timestep)."""

    name = "lcm"
    schedule_strength = True

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.cfg = _read_config(config, {
            **_COMMON,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "original_inference_steps": 50,
            "clip_sample": False,
            "clip_sample_range": 1.0,
            "set_alpha_to_one": True,
            "thresholding": False,
            "timestep_scaling": 10.0,
        })
        cfg = self.cfg
        if cfg["thresholding"]:
            raise _unsupported("dynamic thresholding")
        _require(cfg, "prediction_type", _PREDICTIONS)
        original = int(cfg["original_inference_steps"])
        if not 1 <= original <= int(cfg["num_train_timesteps"]):
            raise _unsupported(f"original_inference_steps {original}")
        self.alphas_cumprod = _alphas_cumprod(cfg, pin_last=False)
        self.final_alpha_cumprod = _ONE if cfg["set_alpha_to_one"] else self.alphas_cumprod[0]
        self._steps = np.zeros(0, dtype=np.int64)

    def set_timesteps(self, num_inference_steps: int, strength: float = 1.0) -> None:
        """``strength`` < 1 (image to image) keeps every step but draws them from the first
        int(original_inference_steps x strength) training-schedule points, as diffusers' LCM img2img does."""
        n = self._check_steps(num_inference_steps)
        original = int(self.cfg["original_inference_steps"])
        if n > original:
            raise InvalidRequest(f"steps must be at most {original} for lcm with this model "
                                 f"(its original_inference_steps), got {n}", "steps")
        k = int(self.cfg["num_train_timesteps"]) // original
        kept = int(original * strength)
        if kept < n:
            raise InvalidRequest(f"lcm draws its steps from int({original} x strength) = {kept} points of its "
                                 f"schedule, fewer than the {n} steps asked for: use at most {max(kept, 1)} "
                                 f"steps, or a strength of at least {n / original:g}", "strength")
        origin = (np.arange(1, kept + 1) * k - 1)[::-1]
        self._steps = origin[np.floor(np.linspace(0, kept, num=n, endpoint=False)).astype(np.int64)]
        self.timesteps = self._steps.astype(np.float32)
        self.num_inference_steps = n
        self.stochastic = n > 1

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """Consistency step; ``noise`` is needed on every step but the last, which returns the denoised x0."""
        i = self._check_index(step_index)
        sample, model_output = _as_f32(sample), _as_f32(model_output)
        t = int(self._steps[i])
        alpha = self.alphas_cumprod[t]
        x0 = self._x0(model_output, sample, alpha)
        if self.cfg["clip_sample"]:
            limit = float(self.cfg["clip_sample_range"])
            x0 = np.clip(x0, -limit, limit)
        # Boundary-condition scalings (sigma_data = 0.5): c_skip -> 1, c_out -> 0 as t -> 0.
        scaled = np.float32(t) * np.float32(self.cfg["timestep_scaling"])
        sd2 = np.float32(0.25)
        c_skip = sd2 / (scaled * scaled + sd2)
        c_out = scaled / np.sqrt(scaled * scaled + sd2)
        denoised = c_out * x0 + c_skip * sample
        if i == self.num_inference_steps - 1:
            return denoised
        prev_t = int(self._steps[i + 1])
        alpha_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        return np.sqrt(alpha_prev) * denoised + np.sqrt(_ONE - alpha_prev) * self._noise(noise, sample)


_FACTORIES: dict[str, Callable[[dict], Scheduler]] = {
    "euler": EulerScheduler,
    "euler_a": EulerAncestralScheduler,
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "dpmpp_2m_karras": functools.partial(DPMSolverMultistepScheduler, karras=True),
    "lcm": LCMScheduler,
}
assert tuple(_FACTORIES) == SCHEDULERS, "request.SCHEDULERS and the implemented schedulers disagree"


def make_scheduler(name: str, config: dict) -> Scheduler:
    """Build a scheduler from any diffusers scheduler_config.json, like ``DiffusersClass.from_config``.

    Models ship the config of whatever scheduler they were published with (PNDM for SD 1.5), so each
    scheduler reads only the keys it knows and defaults the rest, including the keys diffusers recorded in
    ``_use_default_values`` (never set by the model's author).
    """
    if name in FLOW_SCHEDULERS:
        from .flow_match import FlowMatchEulerScheduler

        return FlowMatchEulerScheduler(config)
    factory = _FACTORIES.get(name) if isinstance(name, str) else None
    if factory is None:
        raise InvalidRequest(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS + FLOW_SCHEDULERS)}",
                             "scheduler")
    return factory(config)


def scheduler_for_class(class_name: str, config: dict) -> str | None:
    """Our name for a diffusers scheduler class with this config, or None where we have no exact port.

    This is what a model runs with by default, as diffusers' pipeline runs its own scheduler.
    """
    if class_name == "DPMSolverMultistepScheduler":
        cfg = _read_config(config, {"algorithm_type": "dpmsolver++", "solver_order": 2})
        return "dpmpp_2m" if (cfg["algorithm_type"], cfg["solver_order"]) == ("dpmsolver++", 2) else None
    return {"EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_a",
            "DDIMScheduler": "ddim", "PNDMScheduler": "pndm", "LCMScheduler": "lcm",
            "FlowMatchEulerDiscreteScheduler": "flow_euler"}.get(class_name)
