"""Image conditioning as small pieces of the one denoising loop (pipeline.py), with diffusers' semantics.

A piece (``StepCondition``) sees each UNet call before it runs and each latent after the scheduler step:

- ``unet_feeds(i, feeds)`` may change the UNet's inputs for step ``i`` (absolute index into the scheduler's
  timesteps): the 9-channel inpainting UNet gets the mask and the masked-image latents concatenated to
  ``sample``; a ControlNet unit would run its own graph on ``feeds`` and add its residual inputs here.
- ``after_step(i, latents)`` may change the latents after step ``i``: the 4-channel inpainting blend puts the
  known region back, noised to the next step's level.

Each piece is built once per call with what it needs (the scheduler, its images in latent space), so the loop
stays one loop whatever is combined. ``Noise`` holds the unit-normal draws of a call, so a test can give the
same random numbers another implementation drew.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import InvalidRequest


@dataclass(frozen=True)
class Noise:
    """The random draws of one call, each (count, C, h, w) unit normal, in place of the seeded ones.

    ``latents``: the starting noise (text to image: the initial latents; image to image: the noise added to the
    init at the first kept timestep). ``init`` / ``masked``: the draws of the VAE posterior samples of the init
    and of the masked init (9-channel inpainting); None means zeros, i.e. the posterior mean. Stochastic
    schedulers still draw their per-step noise from the seeds."""

    latents: np.ndarray
    init: np.ndarray | None = None
    masked: np.ndarray | None = None

    @classmethod
    def seeded(cls, rngs: list[np.random.Generator], shape: tuple[int, ...], image: bool) -> Noise:
        """Per-image draws in a fixed order (latents, then the two posterior samples with an init), so image i
        of a call is the image seed + i gives alone."""
        def draw() -> np.ndarray:
            return np.stack([rng.standard_normal(shape, dtype=np.float32) for rng in rngs])

        latents = draw()
        if not image:
            return cls(latents)
        return cls(latents, draw(), draw())

    def check(self, shape: tuple[int, ...]) -> None:
        for name in ("latents", "init", "masked"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise InvalidRequest(f"noise.{name} must have shape {shape}, got {value.shape}", "noise")


def first_step(steps: int, strength: float) -> int:
    """diffusers' ``get_timesteps``: the index of the first timestep kept when only ``strength`` of the
    schedule runs (the last int(steps x strength) steps)."""
    kept = min(int(steps * strength), steps)
    return max(steps - kept, 0)


def sample_posterior(parameters: np.ndarray, eps: np.ndarray | None) -> np.ndarray:
    """The VAE encoder's (mean, log-variance) stacked on channels -> mean + std * eps, as diffusers'
    ``DiagonalGaussianDistribution.sample`` (log-variance clamped to [-30, 20]); ``eps`` None gives the mean."""
    mean, logvar = np.split(parameters.astype(np.float32), 2, axis=1)
    if eps is None:
        return mean
    std = np.exp(np.float32(0.5) * np.clip(logvar, -30.0, 20.0))
    return mean + std * eps


class StepCondition(Protocol):
    """A per-condition piece of the denoising loop (see the module docstring)."""

    def unet_feeds(self, i: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def after_step(self, i: int, latents: np.ndarray) -> np.ndarray: ...


class InpaintChannels:
    """9-channel inpainting UNets (StableDiffusionInpaintPipeline): cat(latents, mask, masked-image latents) on
    channels, the mask and masked latents repeated for the classifier-free-guidance half of the batch."""

    def __init__(self, mask: np.ndarray, masked_latents: np.ndarray) -> None:
        self.mask = mask.astype(np.float32)                 # (1, 1, h, w), binary
        self.masked_latents = masked_latents.astype(np.float32)  # (count, C, h, w)

    def unet_feeds(self, i: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sample = feeds["sample"]
        repeat = sample.shape[0] // self.masked_latents.shape[0]
        mask = np.broadcast_to(self.mask, (sample.shape[0], 1, *sample.shape[2:]))
        masked = np.concatenate([self.masked_latents] * repeat)
        return {**feeds, "sample": np.concatenate([sample, mask, masked], axis=1)}

    def after_step(self, i: int, latents: np.ndarray) -> np.ndarray:
        return latents


class InpaintBlend:
    """Ordinary 4-channel UNets: after each step the known region (mask 0) is the init's latents noised to the
    next timestep (un-noised after the last), as diffusers' inpainting pipeline does for 4-channel UNets."""

    def __init__(self, scheduler, mask: np.ndarray, init_latents: np.ndarray, noise: np.ndarray) -> None:
        self.scheduler, self.mask = scheduler, mask.astype(np.float32)  # (1, 1, h, w), soft
        self.init_latents, self.noise = init_latents, noise

    def unet_feeds(self, i: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return feeds

    def after_step(self, i: int, latents: np.ndarray) -> np.ndarray:
        proper = self.init_latents
        if i < len(self.scheduler.timesteps) - 1:
            proper = self.scheduler.add_noise(proper, self.noise, i + 1)
        return (np.float32(1.0) - self.mask) * proper + self.mask * latents
