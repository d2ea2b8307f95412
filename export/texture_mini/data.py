"""The training set in memory: procedural images (uint8, NCHW) and their specs, plus per-step batches.

Images come from ``aigc_bridge.texture_data`` (numpy), regenerated from the seed on every run and
resume rather than stored: 20,000 textures take about 15 s. Every batch is a pure function of
(seed, phase, step), so a resumed run draws exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from aigc_bridge.texture_data import Spec, sample, training_caption

from .config import TrainConfig


@dataclass
class TrainingData:
    textures: torch.Tensor          # uint8 (N, 3, S, S)
    texture_specs: list[Spec]
    backdrops: torch.Tensor         # uint8 (M, 3, S, 2S): panoramas, trained with tile "x"
    backdrop_specs: list[Spec]


def build_data(config: TrainConfig, progress=None) -> TrainingData:
    def make(split: str, count: int) -> tuple[torch.Tensor, list[Spec]]:
        images, specs = [], []
        for i in range(count):
            s = sample(config.seed, i, split, config.image_size)
            images.append(np.round(s.image * 255).astype(np.uint8).transpose(2, 0, 1))
            specs.append(s.spec)
            if progress is not None:
                progress(1)
        return torch.from_numpy(np.stack(images)), specs

    textures, texture_specs = make("train", config.train_images)
    backdrops, backdrop_specs = make("backdrop", config.backdrop_images)
    return TrainingData(textures, texture_specs, backdrops, backdrop_specs)


def step_rng(seed: int, phase: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent numpy and torch generators for one training step."""
    digest = hashlib.sha256(f"{seed}/{phase}/{step}".encode()).digest()
    np_rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    torch_rng = torch.Generator().manual_seed(int.from_bytes(digest[8:16], "little") & (2**63 - 1))
    return np_rng, torch_rng


def is_backdrop_step(config: TrainConfig, step: int, available: int) -> bool:
    return available > 0 and config.backdrop_every > 0 and step % config.backdrop_every == config.backdrop_every - 1


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range diffusers' VAEs work in."""
    return images.float() / 127.5 - 1.0


def roll_each(batch: torch.Tensor, rng: np.random.Generator, multiple: int = 1, y: bool = True) -> torch.Tensor:
    """Roll every item by its own random shift (a multiple of ``multiple`` pixels). The data are periodic,
    so a rolled image is another valid image of the same material; ``y=False`` for panoramas."""
    h, w = batch.shape[-2:]
    out = torch.empty_like(batch)
    for i in range(batch.shape[0]):
        dy = int(rng.integers(h // multiple)) * multiple if y else 0
        dx = int(rng.integers(w // multiple)) * multiple
        out[i] = torch.roll(batch[i], shifts=(dy, dx), dims=(-2, -1))
    return out


def captions_for(specs: list[Spec], rng: np.random.Generator, empty_fraction: float) -> list[str]:
    """Fresh training captions, with ``empty_fraction`` of them empty (for classifier-free guidance)."""
    return ["" if rng.random() < empty_fraction else training_caption(spec, rng) for spec in specs]
