"""Phase 1: the AutoencoderKL, then the latents of every training image (encoded once).

Loss: L1 + MSE + a tiny KL (calibration recipe). Trained with circular padding (tile "both" for textures,
"x" for panoramas) so that decoding in the runtime's seamless graphs is what was trained.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .circular import circular
from .config import TrainConfig
from .data import TrainingData, is_backdrop_step, roll_each, step_rng, to_unit
from .loop import Checkpointer, Progress, load, lr_factor, save_atomic, stop_on_signals
from .models import build_vae

VAE_DIR, LATENTS_FILE, CHECKPOINT = "vae", "latents.pt", "checkpoints/vae.pt"


def _batch(config: TrainConfig, data: TrainingData, step: int, device) -> tuple[torch.Tensor, str, torch.Generator]:
    rng, gen = step_rng(config.seed, "vae", step)
    if is_backdrop_step(config, step, len(data.backdrops)):
        x = to_unit(data.backdrops[rng.integers(len(data.backdrops), size=max(1, config.vae_batch // 2))])
        x = roll_each(x, rng, y=False)
        mode, flips = "x", (-1,)
    else:
        x = to_unit(data.textures[rng.integers(len(data.textures), size=config.vae_batch)])
        x = roll_each(x, rng)
        mode, flips = "both", (-1, -2)
    for dim in flips:  # mirrored materials are materials too (panoramas only mirror left-right)
        mask = torch.from_numpy(rng.random(x.shape[0]) < 0.5)[:, None, None, None]
        x = torch.where(mask, x.flip(dim), x)
    return x.to(device), mode, gen


def train_vae(config: TrainConfig, data: TrainingData, out: Path, device: torch.device, quiet: bool = False,
              log: Callable[[str], None] = print):
    """Train (or resume, or load the finished) VAE; returns it with ``scaling_factor`` set."""
    from diffusers import AutoencoderKL

    if (out / VAE_DIR / "config.json").is_file():
        return AutoencoderKL.from_pretrained(out / VAE_DIR).to(device)
    torch.manual_seed(config.seed)
    vae = build_vae(config).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    start, spent = 0, 0.0
    if (out / CHECKPOINT).is_file():
        state = load(out / CHECKPOINT)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, spent = state["step"], state["seconds"]
        log(f"vae: resuming at step {start} of {config.vae_steps}")

    def checkpoint(step: int) -> None:
        save_atomic({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "seconds": spent + time.perf_counter() - t0}, out / CHECKPOINT)

    progress = Progress("vae", config.vae_steps, start, quiet)
    t0 = time.perf_counter()
    step = start
    vae.train()
    with stop_on_signals() as stop:
        saver = Checkpointer('vae', checkpoint, config.checkpoint_every_s, stop, progress)
        for step in range(start, config.vae_steps):
            x, mode, gen = _batch(config, data, step, device)
            for group in opt.param_groups:
                group["lr"] = config.vae_lr * lr_factor(step, config.vae_steps, config.warmup_steps // 3)
            with circular(vae, mode):
                posterior = vae.encode(x).latent_dist
                noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
                recon = vae.decode(posterior.mean + posterior.std * noise).sample
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + config.vae_kl_weight * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
            opt.step()
            progress.update(loss.item())
            saver.after_step(step + 1)
        step = config.vae_steps
    progress.close()
    checkpoint(step)
    vae.eval()
    scaling = _scaling_factor(vae, data, device)
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out / VAE_DIR)
    log(f"vae: {config.vae_steps} steps, {progress.seconds_per_step:.3f} s/step this session, "
        f"scaling factor {scaling:.4f}, reconstruction PSNR {_psnr(vae, data, device):.1f} dB")
    return vae


@torch.no_grad()
def _moments(vae, images: torch.Tensor, mode: str, device, batch: int = 256) -> torch.Tensor:
    """Encoder outputs (mean and log-variance stacked on channels) for uint8 images."""
    out = []
    with circular(vae, mode):
        for i in range(0, len(images), batch):
            dist = vae.encode(to_unit(images[i:i + batch]).to(device)).latent_dist
            out.append(torch.cat([dist.mean, dist.logvar], dim=1).cpu())
    return torch.cat(out)


def _scaling_factor(vae, data: TrainingData, device) -> float:
    """1 / std of the latents, as Stable Diffusion's VAE config defines it: unit-variance diffusion input."""
    moments = _moments(vae, data.textures[:2048], "both", device)
    mean, logvar = moments.chunk(2, dim=1)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    return float(1.0 / z.std())


@torch.no_grad()
def _psnr(vae, data: TrainingData, device, count: int = 256) -> float:
    x = to_unit(data.textures[-count:]).to(device)
    with circular(vae, "both"):
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = float(F.mse_loss((recon + 1) / 2, (x + 1) / 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def encode_latents(vae, data: TrainingData, out: Path, device, log: Callable[[str], None] = print) -> dict:
    """Every training image's latent distribution, once: the UNet phase samples from them each step."""
    path = out / LATENTS_FILE
    if path.is_file():
        return load(path)
    t0 = time.perf_counter()
    vae.eval()
    latents = {"textures": _moments(vae, data.textures, "both", device).half(),
               "backdrops": _moments(vae, data.backdrops, "x", device).half(),
               "scaling_factor": float(vae.config.scaling_factor)}
    save_atomic(latents, path)
    log(f"latents: {len(data.textures) + len(data.backdrops)} images in {time.perf_counter() - t0:.0f} s")
    return latents
