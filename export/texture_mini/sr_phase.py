"""The 128 px stage: a tileable super-resolution network trained on the base model's procedural data.

Pairs: each training texture rendered at 128 px (the target), and the same image brought down to 32 px the way
texture-mini makes its images: an area reduction, then (for most pairs) a round trip through the base package's
own VAE, whose softness is what the network must undo. Network: SRVGGNetCompact (Real-ESRGAN's compact
design: convolutions at 32 px, one pixel shuffle to 128 px, plus the nearest-upsampled input), trained with
circular padding so it tiles, and saved as a plain state dict that spandrel detects, so it is exported by the
same code as any upscaler an artist has (``aigc_bridge_export.upscaler_export``).

Training starts from a bilinear upscaler (``bilinear_start``), not from the random network's 4 px blocks.

Loss: L1, plus an L1 distance between radially binned log power spectra. The spectrum term does not care where
a grain or a grout line falls, only that the detail is there at the right scale and strength, which L1 alone
gives up on wherever the 32 px input cannot say exactly where (it averages, which is a blur). A third term
matches how much the image steps at each position within an input pixel's cell to the target's
(``cell_phase_steps``): L1 alone snaps each output pixel to its cell's majority, which steps at the cell borders
(the block pattern, and a seam at the wrap, which is a cell border).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aigc_bridge.assets.resize import box_reduce
from aigc_bridge.texture_data import sample

from ..seamless import seamless
from .config import SRConfig
from .data import step_rng
from .loop import Checkpointer, Ema, Progress, load, lr_factor, save_atomic, stop_on_signals

CHECKPOINT, WEIGHTS = "checkpoints/sr.pt", "sr/texture-mini-sr.pth"
_ENCODE_MARGIN = 8  # pixels of wrapped context around each image for the base package's (zero-padded) encoder


@dataclass
class SRData:
    low: torch.Tensor    # uint8 (N, 3, 32, 32): what the base model's images look like
    high: torch.Tensor   # uint8 (N, 3, 128, 128): the same textures at full resolution


def build_sr_data(config: SRConfig, base_package: Path, progress=None) -> SRData:
    """Render the targets, then make their inputs (area reduction, then the base VAE for ``vae_fraction``)."""
    high = []
    for i in range(config.train_images):
        high.append(np.round(sample(config.seed, i, "train", config.high_size).image * 255).astype(np.uint8))
        if progress is not None:
            progress(1)
    high = np.stack(high)
    reduced = np.stack([box_reduce(x, config.scale) for x in high.astype(np.float32)])
    reduced /= 255.0
    rng = np.random.default_rng([config.seed, 31])
    through_vae = rng.random(len(high)) < config.vae_fraction
    low = reduced.copy()
    if through_vae.any():
        low[through_vae] = vae_round_trip(base_package, reduced[through_vae])
    return SRData(torch.from_numpy(np.round(np.clip(low, 0, 1) * 255).astype(np.uint8).transpose(0, 3, 1, 2)),
                  torch.from_numpy(high.transpose(0, 3, 1, 2).copy()))


def vae_round_trip(package: Path, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Encoder mean -> tile-both decoder of the base package (onnxruntime), for periodic (N, H, W, 3) images.

    The package's encoder zero-pads (it ships without seamless variants), so each image gets a margin of its own
    wrapped pixels and the latent is cropped back before the circular decoder."""
    import json

    import onnxruntime as ort

    manifest = json.loads((package / "model.json").read_text(encoding="utf-8"))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    enc = ort.InferenceSession(str(package / manifest["vae_encoder"]["graphs"]["none"]), options,
                               providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(package / manifest["vae_decoder"]["graphs"]["both"]), options,
                               providers=["CPUExecutionProvider"])
    m, factor, channels = _ENCODE_MARGIN, manifest["vae_scale_factor"], manifest["latent_channels"]
    out = []
    for i in range(0, len(images), batch):
        x = np.pad(images[i:i + batch], ((0, 0), (m, m), (m, m), (0, 0)), mode="wrap")
        moments = enc.run(None, {"image": (x.transpose(0, 3, 1, 2) * 2 - 1).astype(np.float32)})[0]
        lm = m // factor
        mean = np.ascontiguousarray(moments[:, :channels, lm:-lm, lm:-lm])
        decoded = dec.run(None, {"latent": mean.astype(np.float32)})[0]
        out.append(np.clip(decoded.transpose(0, 2, 3, 1) / 2 + 0.5, 0, 1))
    return np.concatenate(out)


def build_sr(config: SRConfig) -> torch.nn.Module:
    from aigc_bridge_export.spandrel_import import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=config.features, num_conv=config.convs,
                    upscale=config.scale, act_type="prelu")
    if config.bilinear_start:
        bilinear_start(model, config.scale)
    return model


def _bilinear_taps(scale: int) -> torch.Tensor:
    """(scale, 3): the weights of the neighbours (-1, 0, +1) of a low pixel for each of its ``scale`` high
    pixels under bilinear upsampling (half-pixel centres, as ``F.interpolate(align_corners=False)``)."""
    taps = torch.zeros(scale, 3)
    for i in range(scale):
        d = (2 * i + 1 - scale) / (2 * scale)  # where high pixel i falls, in low pixels from the centre
        taps[i, 1] = 1 - abs(d)
        taps[i, 0 if d < 0 else 2] = abs(d)
    return taps


@torch.no_grad()
def bilinear_start(model: torch.nn.Module, scale: int) -> None:
    """Start from a bilinear upscaler, not from a blocky one.

    The network adds its output to the nearest-upsampled input (spandrel's Compact, fixed by the file format), so
    at a random start its images are 4 px blocks that the training must learn to cancel, and 3,000 steps did not
    (the first shipped stage's block pattern). Three feature channels here carry the input through every layer
    unchanged (identity convolutions, PReLU slope 1), and the last convolution reads them as "bilinear minus
    nearest": step 0 outputs the bilinear image, and the rest of the network learns only the detail. The same
    architecture and file format (spandrel still detects it); only where training starts differs."""
    convs = [m for m in model.body if isinstance(m, torch.nn.Conv2d)]
    prelus = [m for m in model.body if isinstance(m, torch.nn.PReLU)]
    channels = convs[0].in_channels
    for conv in convs[:-1]:
        conv.weight[:channels].zero_()
        conv.bias[:channels].zero_()
        for c in range(channels):
            conv.weight[c, c, 1, 1] = 1.0
    for prelu in prelus:
        prelu.weight[:channels] = 1.0
    last = convs[-1]
    last.weight.mul_(0.1)  # the detail starts small, so the first steps do not undo the bilinear start
    last.bias.zero_()
    last.weight[:, :channels].zero_()
    taps = _bilinear_taps(scale)
    for c in range(channels):
        for i in range(scale):
            for j in range(scale):
                kernel = torch.outer(taps[i], taps[j])
                kernel[1, 1] -= 1.0  # minus the nearest-upsampled input that the network adds
                last.weight[(c * scale + i) * scale + j, c] = kernel


def _batch(config: SRConfig, data: SRData, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rolled (by whole input pixels, the target by ``scale`` times as much), flipped and transposed pairs:
    the data are periodic and any mirror image of a material is a material."""
    rng, _ = step_rng(config.seed, "sr", step)
    idx = rng.integers(len(data.low), size=config.batch)
    low, high = data.low[idx].float() / 255.0, data.high[idx].float() / 255.0
    lows, highs = [], []
    for i in range(config.batch):
        dy, dx = (int(v) for v in rng.integers(config.low_size, size=2))
        a = torch.roll(low[i], (dy, dx), dims=(-2, -1))
        b = torch.roll(high[i], (dy * config.scale, dx * config.scale), dims=(-2, -1))
        flips = rng.random(3) < 0.5
        for dim, flip in zip((-1, -2), flips[:2]):
            if flip:
                a, b = a.flip(dim), b.flip(dim)
        if flips[2]:
            a, b = a.transpose(-1, -2), b.transpose(-1, -2)
        lows.append(a)
        highs.append(b)
    return torch.stack(lows), torch.stack(highs)


def _radial_bins(size: int) -> tuple[torch.Tensor, int]:
    fy = torch.fft.fftfreq(size) * size
    fx = torch.fft.rfftfreq(size) * size
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().long().clamp(max=size // 2)
    return radius.flatten(), size // 2 + 1


def log_spectrum(images: torch.Tensor, bins: torch.Tensor, count: int) -> torch.Tensor:
    """log of the luminance power in each integer radius (cycles per image), per image: (B, count)."""
    lum = images.mean(dim=1)
    lum = lum - lum.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.rfft2(lum, norm="ortho").abs().square().flatten(1)
    binned = torch.zeros(images.shape[0], count, dtype=power.dtype).index_add_(1, bins, power)
    return torch.log(binned + 1e-4)


def cell_phase_steps(images: torch.Tensor, scale: int) -> torch.Tensor:
    """log of the mean |step| between neighbouring pixels at each of the ``scale`` positions in an input cell,
    per axis: (2, scale). Real data steps about as much between cells as within them; a blocky output steps at
    the cell borders (and the wrap is one of them, so the seam ratio counts it)."""
    lum = images.mean(dim=1)
    out = []
    for dim in (-1, -2):
        step = (lum - torch.roll(lum, -1, dims=dim)).abs()
        step = step.mean(dim=(0, -1 if dim == -2 else -2))  # per column (or row)
        out.append(step.reshape(-1, scale).mean(dim=0))
    return torch.log(torch.stack(out) + 1e-4)


def train_sr(config: SRConfig, data: SRData, out: Path, device: torch.device, quiet: bool = False,
             log: Callable[[str], None] = print) -> Path:
    """Train (or resume, or find finished) the 128 px stage; returns its weights file (EMA, a state dict)."""
    if (out / WEIGHTS).is_file():
        return out / WEIGHTS
    torch.manual_seed(config.seed + 2)
    model = build_sr(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    ema = Ema(list(model.parameters()), config.ema_decay)
    start, spent = 0, 0.0
    if (out / CHECKPOINT).is_file():
        state = load(out / CHECKPOINT)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        start, spent = state["step"], state["seconds"]
        log(f"sr: resuming at step {start} of {config.steps}")

    def checkpoint(step: int) -> None:
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                     "step": step, "seconds": spent + time.perf_counter() - t0}, out / CHECKPOINT)

    bins, count = _radial_bins(config.high_size)
    progress = Progress("sr", config.steps, start, quiet)
    t0 = time.perf_counter()
    model.train()
    with stop_on_signals() as stop:
        saver = Checkpointer("sr", checkpoint, config.checkpoint_every_s, stop, progress)
        for step in range(start, config.steps):
            low, high = (t.to(device) for t in _batch(config, data, step))
            for group in opt.param_groups:
                group["lr"] = config.lr * lr_factor(step, config.steps, config.warmup_steps)
            with seamless(model, "both"):
                pred = model(low)
            loss = F.l1_loss(pred, high)
            if config.grid_weight > 0:
                loss = loss + config.grid_weight * F.l1_loss(cell_phase_steps(pred, config.scale),
                                                             cell_phase_steps(high, config.scale))
            if config.spectral_weight > 0:
                loss = loss + config.spectral_weight * F.l1_loss(log_spectrum(pred, bins, count),
                                                                 log_spectrum(high, bins, count)) / 10.0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            ema.update(step)
            progress.update(loss.item())
            saver.after_step(step + 1)
    progress.close()
    checkpoint(config.steps)
    log(f"sr: {config.steps} steps, {progress.seconds_per_step:.3f} s/step this session")
    ema.copy_to_params()
    weights = out / WEIGHTS
    save_atomic(model.cpu().state_dict(), weights)
    return weights
