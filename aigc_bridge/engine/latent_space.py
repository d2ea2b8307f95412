"""How the denoiser's latents map to the VAE's own space, read from the manifest (docs/model-package.md).

One place for it, because decoding (every run) and encoding (image to image, inpainting) must be exact
inverses, and the families differ: SD scales, SDXL-derived VAEs may also standardise per channel
(``latents_mean`` / ``latents_std``), flow-model VAEs shift (``shift_factor``). The arithmetic order is
diffusers' (float32), so images match its pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatentSpace:
    scaling: np.float32
    shift: np.float32
    mean: np.ndarray | None  # (1, C, 1, 1) float32, with std, or neither
    std: np.ndarray | None

    @classmethod
    def from_manifest(cls, manifest: dict) -> LatentSpace:
        mean, std = manifest.get("vae_latents_mean"), manifest.get("vae_latents_std")
        if mean is not None and std is not None:
            mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
        else:
            mean = std = None
        return cls(np.float32(manifest["vae_scaling_factor"]), np.float32(manifest.get("vae_shift_factor") or 0.0),
                   mean, std)

    def to_vae(self, latents: np.ndarray) -> np.ndarray:
        """Denoised latents -> the VAE decoder's input."""
        latents = latents.astype(np.float32)
        if self.mean is not None:
            return latents * self.std / self.scaling + self.mean
        return latents / self.scaling + self.shift

    def from_vae(self, latents: np.ndarray) -> np.ndarray:
        """The VAE encoder's latents -> the denoiser's space (the inverse of ``to_vae``)."""
        latents = latents.astype(np.float32)
        if self.mean is not None:
            return (latents - self.mean) * self.scaling / self.std
        return (latents - self.shift) * self.scaling
