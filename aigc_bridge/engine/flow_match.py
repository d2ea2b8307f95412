"""Flow-matching Euler in numpy: diffusers' ``FlowMatchEulerDiscreteScheduler``, which SD 3 / 3.5 and FLUX.1 ship.

The model predicts a velocity v = noise - x0 along the straight path x_sigma = (1 - sigma) x0 + sigma noise,
and each step is x += (sigma_next - sigma) v. What differs between models is the sigma schedule: a fixed
``shift`` (SD 3: 3.0) or, with ``use_dynamic_shifting`` (FLUX.1 dev), a shift that grows with the image's
token count: mu = :func:`calculate_shift` (diffusers' function of the same name, linear in the sequence
length). The arithmetic mirrors diffusers' dtypes (float64 where it computes in numpy float64, float32 where
it goes through torch or is handed float32 sigmas), so timesteps match it to the last bit or nearly.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ModelPackageError
from .schedulers import Scheduler, _as_f32, _read_config, _unsupported

FLOW_DEFAULTS = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "invert_sigmas": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
}


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """mu for dynamic shifting: linear in the image's token count, base_shift at base_seq_len tokens and
    max_shift at max_seq_len (diffusers' ``calculate_shift``, python floats)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


class FlowMatchEulerScheduler(Scheduler):
    """FlowMatchEulerDiscreteScheduler (deterministic; no stochastic sampling, no per-token timesteps)."""

    name = "flow_euler"

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.cfg = cfg = _read_config(config, FLOW_DEFAULTS)
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                    "stochastic_sampling"):
            if cfg[key]:
                raise _unsupported(key)
        if cfg["time_shift_type"] not in ("exponential", "linear"):
            raise _unsupported(f"time_shift_type {cfg['time_shift_type']!r}")
        n = int(cfg["num_train_timesteps"])
        # __init__'s training schedule, in float32 as diffusers computes it in torch; only its ends are used.
        sigmas = np.linspace(1, n, n, dtype=np.float32)[::-1].copy() / np.float32(n)
        if not cfg["use_dynamic_shifting"]:
            shift = np.float32(cfg["shift"])
            sigmas = shift * sigmas / (np.float32(1) + (shift - np.float32(1)) * sigmas)
        self.sigma_min, self.sigma_max = float(sigmas[-1]), float(sigmas[0])

    @property
    def dynamic(self) -> bool:
        """True when the schedule depends on the resolution (``mu`` must be given to :meth:`set_timesteps`)."""
        return bool(self.cfg["use_dynamic_shifting"])

    def mu_for(self, image_seq_len: int) -> float:
        """The dynamic shift for an image of ``image_seq_len`` tokens, from this config's bounds."""
        cfg = self.cfg
        return calculate_shift(image_seq_len, cfg["base_image_seq_len"], cfg["max_image_seq_len"],
                               cfg["base_shift"], cfg["max_shift"])

    def set_timesteps(self, num_inference_steps: int, mu: float | None = None,
                      sigmas: np.ndarray | list | None = None) -> None:
        """diffusers' ``set_timesteps(n, sigmas=..., mu=...)``: ``sigmas`` are the unshifted ones a pipeline
        passes (FLUX.1: linspace(1, 1/n, n)); without them the scheduler spaces timesteps itself (SD 3)."""
        n = self._check_steps(num_inference_steps)
        cfg = self.cfg
        if self.dynamic and mu is None:
            raise ModelPackageError("this flow-matching config shifts by resolution: mu is needed", "scheduler")
        if sigmas is None:
            train = int(cfg["num_train_timesteps"])
            s = np.linspace(self.sigma_max * train, self.sigma_min * train, n) / train  # float64
        else:
            s = np.asarray(sigmas).astype(np.float32)
            if len(s) != n:
                raise ValueError(f"{len(s)} sigmas for {n} steps")
        if self.dynamic:
            s = self._time_shift(float(mu), s)
        else:
            shift = cfg["shift"]
            s = shift * s / (1 + (shift - 1) * s)
        if cfg["shift_terminal"]:
            one_minus = 1 - s
            s = 1 - one_minus / (one_minus[-1] / (1 - cfg["shift_terminal"]))
        s = _as_f32(s)
        self.timesteps = s * np.float32(cfg["num_train_timesteps"])
        self.sigmas = np.concatenate([s, np.zeros(1, dtype=np.float32)])
        self.num_inference_steps = n

    def _time_shift(self, mu: float, t: np.ndarray) -> np.ndarray:
        if self.cfg["time_shift_type"] == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)
        return mu / (mu + (1 / t - 1) ** 1.0)

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        """x + (sigma_next - sigma) * velocity, in float32."""
        i = self._check_index(step_index)
        dt = self.sigmas[i + 1] - self.sigmas[i]
        return _as_f32(sample) + dt * _as_f32(model_output)


def is_flow_config(config: dict | None) -> bool:
    return bool(config) and config.get("_class_name") == "FlowMatchEulerDiscreteScheduler"
