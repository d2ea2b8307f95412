"""Every number of a texture-mini training run, in one frozen dataclass with named presets.

The "full" preset is the one the model card describes (about 2 hours on 2 CPU cores, minutes on a GPU);
"smoke" runs the whole path in a few minutes and "test" in seconds (the end-to-end pytest). A run writes
its config next to its checkpoints, and ``--resume`` refuses a different one, so a resumed run is the
run that was started.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


class JsonConfig:
    """Frozen-dataclass configs that a run writes next to its checkpoints and ``--resume`` compares."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        data = json.loads(text)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
        return cls(**kwargs)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n", encoding="utf-8")


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    seed: int = 0
    image_size: int = 32
    # data
    train_images: int = 20_000        # textures, pre-generated once (periodic: rolls augment for free)
    backdrop_images: int = 1_600      # 2:1 panoramas (image_size x 2 * image_size), trained with tile "x"
    backdrop_every: int = 10          # one backdrop batch (half as many, twice as wide) every N steps
    # tokenizer + text encoder (word-level: the caption grammar has ~80 words)
    text_length: int = 16
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate: int = 128
    # VAE: AutoencoderKL, factor 2 ** (len(blocks) - 1)
    vae_blocks: tuple[int, ...] = (32, 64)
    vae_latent_channels: int = 4
    vae_steps: int = 1_500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # UNet: UNet2DConditionModel, cross-attention only at the lowest resolution and in the mid block
    unet_blocks: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 1
    unet_attention_heads: int = 8
    unet_steps: int = 13_000
    unet_batch: int = 32
    unet_lr: float = 5e-4
    text_lr: float = 5e-4
    warmup_steps: int = 300
    ema_decay: float = 0.998
    empty_caption_fraction: float = 0.1
    min_snr_gamma: float = 5.0        # 0 turns min-SNR loss weighting off
    prediction_type: str = "v_prediction"   # or "epsilon" (the calibration run's; see unet_phase.py)
    grad_clip: float = 1.0
    # noise schedule (linear betas: terminal SNR ~ 0, so the mean colour cannot leak through at t = T)
    train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # bookkeeping
    checkpoint_every_s: float = 120.0
    sample_steps: int = 20            # what the package recommends
    sample_guidance: float = 5.0

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_blocks) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_factor


PRESETS: dict[str, TrainConfig] = {
    "full": TrainConfig(),
    "smoke": TrainConfig(train_images=2_000, backdrop_images=200, vae_steps=150, unet_steps=300,
                         warmup_steps=30, checkpoint_every_s=60.0),
    # 64 px output: a factor-4 VAE keeps the UNet at 16x16 latents (same UNet cost); the VAE costs ~1.7x
    # per step. Not the default: see docs/texture-mini.md ("Resolution").
    "full64": TrainConfig(image_size=64, vae_blocks=(16, 32, 64)),
    "test": TrainConfig(train_images=128, backdrop_images=16, backdrop_every=4, vae_steps=6, unet_steps=8,
                        vae_batch=8, unet_batch=8, warmup_steps=2, vae_blocks=(16, 32), unet_blocks=(16, 32),
                        unet_attention_heads=2, text_hidden=32, text_intermediate=64, checkpoint_every_s=0.0,
                        sample_steps=4),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class SRConfig(JsonConfig):
    """The 128 px stage: a super-resolution network conditioned on the base model's 32 px output
    (docs/texture-mini.md, "128 px"). Its pairs are real images rendered at ``low_size * scale`` and the same
    images brought down to ``low_size`` the way the base model makes them (area reduction, then the base
    package's own VAE round trip), so the network learns to turn what texture-mini draws into what the
    procedural data looks like at full resolution."""

    seed: int = 0
    low_size: int = 32
    scale: int = 4
    train_images: int = 4_000          # rendered once at 128 px (~40 ms each); rolls and flips augment
    vae_fraction: float = 0.85         # inputs sent through the base VAE; the rest are plain area reductions
    # SRVGGNetCompact (Real-ESRGAN's compact network, one of the architectures spandrel detects)
    features: int = 32
    convs: int = 12
    bilinear_start: bool = True        # start training from a bilinear upscaler (sr_phase.bilinear_start)
    steps: int = 6_000
    batch: int = 16
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grid_weight: float = 1.0           # steps at each position in a cell vs the target's (sr_phase.cell_phase_steps)
    spectral_weight: float = 0.5       # radially binned log power spectrum (phase-free: rewards real detail)
    grad_clip: float = 1.0
    checkpoint_every_s: float = 120.0

    @property
    def high_size(self) -> int:
        return self.low_size * self.scale


SR_PRESETS: dict[str, SRConfig] = {
    "full": SRConfig(),
    "smoke": SRConfig(train_images=1_200, steps=600, warmup_steps=50, checkpoint_every_s=60.0),
    "test": SRConfig(train_images=24, steps=6, batch=4, features=8, convs=2, warmup_steps=2,
                     checkpoint_every_s=0.0),
}


def sr_preset(name: str, **overrides) -> SRConfig:
    if name not in SR_PRESETS:
        raise ValueError(f"unknown preset {name!r}; one of {', '.join(SR_PRESETS)}")
    return dataclasses.replace(SR_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
