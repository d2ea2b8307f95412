"""Phase 2: the UNet and the text encoder, trained jointly on the pre-encoded latents.

DDPM on linear betas (terminal SNR ~ 0) with **v-prediction**: near t = T an epsilon target hardly depends
on the image (sqrt(alpha_bar) ~ 0.006), so an epsilon model gets almost no gradient for what the prompt says
about the whole image (its colour, its layout), which is decided exactly there; the v target is ~ -x0 there
(Lin et al. 2023 pair zero terminal SNR with v). Measured on the smoke data: v reached 73 % colour adherence
after 400 steps, epsilon 20 % after 1,000. Also min-SNR loss weighting (gamma 5, Hang et al. 2023), 10 %
empty captions (classifier-free guidance), AdamW with warm-up and cosine decay, gradient clipping, and an
EMA of the weights, which is what ships.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .circular import circular
from .config import TrainConfig
from .data import TrainingData, captions_for, is_backdrop_step, roll_each, step_rng
from .loop import Checkpointer, Ema, Progress, load, lr_factor, save_atomic, stop_on_signals
from .models import build_text_encoder, build_unet, tokenize

UNET_DIR, TEXT_DIR, CHECKPOINT = "unet", "text_encoder", "checkpoints/unet.pt"


def alphas_cumprod(config: TrainConfig) -> torch.Tensor:
    betas = torch.linspace(config.beta_start, config.beta_end, config.train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def _batch(config: TrainConfig, data: TrainingData, latents: dict, tokenizer, step: int):
    rng, gen = step_rng(config.seed, "unet", step)
    if is_backdrop_step(config, step, len(data.backdrops)):
        idx = rng.integers(len(data.backdrops), size=max(1, config.unet_batch // 2))
        moments, specs, mode = latents["backdrops"][idx], [data.backdrop_specs[i] for i in idx], "x"
    else:
        idx = rng.integers(len(data.textures), size=config.unet_batch)
        moments, specs, mode = latents["textures"][idx], [data.texture_specs[i] for i in idx], "both"
    moments = roll_each(moments.float(), rng, y=mode == "both")  # a latent pixel = vae_factor image pixels
    mean, logvar = moments.chunk(2, dim=1)
    z = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)) * latents["scaling_factor"]
    ids = tokenize(tokenizer, captions_for(specs, rng, config.empty_caption_fraction), config.text_length)
    t = torch.randint(0, config.train_timesteps, (z.shape[0],), generator=gen)
    noise = torch.randn(z.shape, generator=gen)
    return z, ids, t, noise, mode


def train_unet(config: TrainConfig, data: TrainingData, latents: dict, tokenizer, out: Path,
               device: torch.device, quiet: bool = False, log: Callable[[str], None] = print):
    """Train (or resume, or load the finished) UNet and text encoder; returns their EMA weights."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    if (out / UNET_DIR / "config.json").is_file() and (out / TEXT_DIR / "config.json").is_file():
        return (UNet2DConditionModel.from_pretrained(out / UNET_DIR),
                CLIPTextModel.from_pretrained(out / TEXT_DIR))
    torch.manual_seed(config.seed + 1)
    unet = build_unet(config).to(device)
    text_encoder = build_text_encoder(config, len(tokenizer)).to(device)
    opt = torch.optim.AdamW([{"params": list(unet.parameters()), "lr": config.unet_lr, "base": config.unet_lr},
                             {"params": list(text_encoder.parameters()), "lr": config.text_lr,
                              "base": config.text_lr}], weight_decay=1e-2)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = Ema(params, config.ema_decay)
    start, spent = 0, 0.0
    if (out / CHECKPOINT).is_file():
        state = load(out / CHECKPOINT)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        start, spent = state["step"], state["seconds"]
        log(f"unet: resuming at step {start} of {config.unet_steps}")

    def checkpoint(step: int) -> None:
        save_atomic({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                     "optimizer": opt.state_dict(), "ema": ema.state_dict(), "step": step,
                     "seconds": spent + time.perf_counter() - t0}, out / CHECKPOINT)

    bar_cumprod = alphas_cumprod(config).to(device)
    progress = Progress("unet", config.unet_steps, start, quiet)
    t0 = time.perf_counter()
    unet.train()
    text_encoder.train()
    with stop_on_signals() as stop:
        saver = Checkpointer('unet', checkpoint, config.checkpoint_every_s, stop, progress)
        for step in range(start, config.unet_steps):
            z, ids, t, noise, mode = (v.to(device) if torch.is_tensor(v) else v
                                      for v in _batch(config, data, latents, tokenizer, step))
            for group in opt.param_groups:
                group["lr"] = group["base"] * lr_factor(step, config.unet_steps, config.warmup_steps)
            a = bar_cumprod[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * z + (1 - a).sqrt() * noise
            with circular(unet, mode):
                hidden = text_encoder(ids).last_hidden_state
                pred = unet(noisy, t, hidden).sample
            target = noise if config.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * z
            per_item = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
            weight = _min_snr_weight(bar_cumprod[t], config.min_snr_gamma, config.prediction_type)
            loss = (per_item * weight).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            ema.update(step)
            progress.update(loss.item())
            saver.after_step(step + 1)
    progress.close()
    checkpoint(config.unet_steps)
    log(f"unet: {config.unet_steps} steps, {progress.seconds_per_step:.3f} s/step this session")
    ema.copy_to_params()
    unet.eval()
    text_encoder.eval()
    unet.save_pretrained(out / UNET_DIR)
    text_encoder.save_pretrained(out / TEXT_DIR)
    return unet, text_encoder


def _min_snr_weight(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v (Hang et al. 2023); ones when gamma is 0."""
    if gamma <= 0:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / (snr if prediction_type == "epsilon" else snr + 1)
