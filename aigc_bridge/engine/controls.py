"""ControlNet units and the SD 2 depth channel: pieces of the one denoising loop (conditioning.StepCondition).

Semantics are diffusers' (StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline,
StableDiffusionDepth2ImgPipeline):

- a control image is brought to the generation size (``inputs.fit_to``), kept in [0, 1] and repeated for each
  image and for both halves of the classifier-free-guidance batch;
- at step k of n a unit is on unless k / n < start or (k + 1) / n > end (``controlnet_keep``); its residuals
  are scaled by its conditioning scale, the residuals of several units summed in order, and the UNet's
  residual-input variant takes the sum. A step where no unit is on runs the plain UNet (adding zeros is exact);
- a depth map is resized to the latent size (bicubic, as torch's ``interpolate``), normalised to [-1, 1] per
  image and concatenated to the UNet's input after the scheduler's scaling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest
from ..request import GenerateRequest
from . import inputs

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def check_request(manifest: dict, req: GenerateRequest) -> None:
    """What this package can do with the request's controls and depth: errors name the field and what it has."""
    model = manifest["model_id"]
    have = manifest.get("controlnets") or {}
    for i, control in enumerate(req.controls):
        if control.name not in have:
            has = (f"it has {', '.join(sorted(have))}" if have else
                   "it has none (add one: aigc-bridge add-controlnet PACKAGE ID_OR_PATH)")
            raise InvalidRequest(f"{model} has no controlnet {control.name!r}: {has}", f"controls[{i}].name")
        entry = have[control.name]
        if req.tile not in entry["graphs"] or req.tile not in manifest["unet"].get("control", {}).get("graphs", {}):
            raise InvalidRequest(f"controlnet {control.name} has no tile {req.tile} graph in {model} (it was "
                                 "exported without seamless graphs)", "tile")
    depth_model = manifest["unet"].get("conditioning") == "depth"
    if req.depth is not None and not depth_model:
        raise InvalidRequest(f"{model} takes no depth map (its UNet has no depth channel; an SD 2 depth model does"
                             + (f"; for a depth controlnet use controls, it has {', '.join(sorted(have))}" if have
                                else "") + ")", "depth")
    if depth_model and req.depth is None:
        raise InvalidRequest(f"{model} is a depth model (its UNet takes a depth channel): give a depth map "
                             "(depth, --depth depth.png; near = bright)", "depth")


def keep(k: int, n: int, start: float, end: float) -> float:
    """diffusers' ``controlnet_keep`` for step k of n."""
    return 1.0 - float(k / n < start or (k + 1) / n > end)


@dataclass
class ControlUnit:
    name: str
    runner: Runner              # the controlnet graph, constants (text conditions) prepared
    image: np.ndarray           # (batch, C, H, W) in [0, 1], the CFG batch's layout
    scale: float
    start: float
    end: float
    in_channels: int            # of the latents the controlnet reads (4 even on a depth UNet)


class ControlUnits:
    """Runs every unit that is on for the step, sums their scaled residuals into the UNet's feeds."""

    def __init__(self, units: list[ControlUnit], residual_names: list[str], first: int, total: int) -> None:
        """``first``: the scheduler index of the call's first step; ``total``: the steps it runs."""
        self.units, self.names, self.first, self.total = units, tuple(residual_names), first, total

    def scales(self, i: int) -> list[float]:
        k = i - self.first
        return [u.scale * keep(k, self.total, u.start, u.end) for u in self.units]

    def unet_feeds(self, i: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        total: list[np.ndarray] | None = None
        for unit, scale in zip(self.units, self.scales(i)):
            if scale == 0.0:
                continue  # its residuals would be zeros
            sample = feeds["sample"][:, :unit.in_channels]
            residuals = unit.runner({"sample": np.ascontiguousarray(sample), "timestep": feeds["timestep"],
                                     "controlnet_cond": unit.image})
            s = np.float32(scale)
            scaled = [r * s for r in residuals]
            total = scaled if total is None else [a + b for a, b in zip(total, scaled)]
        if total is None:
            return feeds
        return {**feeds, **dict(zip(self.names, total))}

    def after_step(self, i: int, latents: np.ndarray) -> np.ndarray:
        return latents


class DepthChannel:
    """The SD 2 depth UNet's fifth input channel: the depth map, for both halves of the CFG batch."""

    def __init__(self, depth: np.ndarray) -> None:
        self.depth = depth.astype(np.float32)  # (1, 1, h, w) in [-1, 1]

    def unet_feeds(self, i: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sample = feeds["sample"]
        depth = np.broadcast_to(self.depth, (sample.shape[0], 1, *sample.shape[2:]))
        return {**feeds, "sample": np.concatenate([sample, depth], axis=1)}

    def after_step(self, i: int, latents: np.ndarray) -> np.ndarray:
        return latents


def control_image(req: GenerateRequest, index: int, channels: int, batch: int, cfg: bool) -> np.ndarray:
    """Control ``index``'s image at the generation size, (batch x 2 with CFG, C, H, W) in [0, 1]."""
    field = f"controls[{index}].image"
    pixels = inputs.decode(req.controls[index].image, field, grey=channels == 1)
    pixels, _ = inputs.fit_to(pixels, req.width, req.height, req.tile)
    image = (pixels[None, None] if channels == 1 else pixels.transpose(2, 0, 1)[None]).astype(np.float32)
    image = np.repeat(image, batch, axis=0)
    return np.ascontiguousarray(np.concatenate([image, image]) if cfg else image)


def depth_map(req: GenerateRequest, vae_factor: int) -> tuple[np.ndarray, str | None]:
    """The request's depth map as the depth UNet takes it: (1, 1, h, w) in [-1, 1] (near = 1)."""
    pixels = inputs.decode(req.depth, "depth", grey=True)
    pixels, note = inputs.fit_to(pixels, req.width, req.height, req.tile)
    small = resize_bicubic(pixels, req.height // vae_factor, req.width // vae_factor)
    lo, hi = float(small.min()), float(small.max())
    if hi <= lo:
        raise InvalidRequest("depth is one flat value: a depth map needs near and far parts (near = bright)", "depth")
    depth = np.float32(2.0) * (small - np.float32(lo)) / np.float32(hi - lo) - np.float32(1.0)
    return depth[None, None].astype(np.float32), (f"depth {note}" if note else None)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> list[np.ndarray]:
    """torch's bicubic convolution weights (A = -0.75) for the four taps around a source position."""
    a = np.float32(a)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    one = np.float32(1.0)
    return [far(t + one), near(t), near(one - t), far(np.float32(2.0) - t)]


def _resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = x.shape[axis]
    if n == size:
        return x
    src = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * np.float32(n / size) - np.float32(0.5)
    base = np.floor(src)
    weights = _cubic_weights((src - base).astype(np.float32))
    base = base.astype(np.int64)
    out = None
    for tap, w in enumerate(weights):
        index = np.clip(base - 1 + tap, 0, n - 1)
        shape = [1] * x.ndim
        shape[axis] = size
        term = np.take(x, index, axis=axis) * w.reshape(shape)
        out = term if out is None else out + term
    return out.astype(np.float32)


def resize_bicubic(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) -> (height, width) as ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``
    (no antialiasing, borders clamped): what diffusers' depth-to-image pipeline does to a depth map."""
    return _resize_axis(_resize_axis(x.astype(np.float32), width, 1), height, 0)
