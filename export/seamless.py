"""Seamless (circular) padding for every padded Conv2d of a UNet or VAE, and for the VAE encoder's downsamplers,
which pad one pixel right and bottom themselves before an unpadded stride-2 conv (diffusers' Downsample2D).

Circular padding on both axes makes the whole pipeline commute with circular shifts, so outputs tile;
on x only it makes 360-degree panoramas wrap. Both UNet and VAE must be patched: patching the UNet alone
leaves a seam from the VAE (see shared notes, onnx-export.md section 5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _x_only_forward(conv: nn.Conv2d):
    pad_h, pad_w = conv.padding

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (pad_w, pad_w, 0, 0), mode="circular")
        x = F.pad(x, (0, 0, pad_h, pad_h), mode="constant")
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


def _downsample_forward(down: nn.Module, mode: str):
    """Downsample2D(padding=0): F.pad(x, (0, 1, 0, 1)) then the conv; circular on the axes ``mode`` wraps."""

    def forward(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if down.norm is not None:
            hidden_states = down.norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        hidden_states = F.pad(hidden_states, (0, 1, 0, 0), mode="circular")
        hidden_states = F.pad(hidden_states, (0, 0, 0, 1), mode="circular" if mode == "both" else "constant")
        return down.conv(hidden_states)

    return forward


def _pads_itself(module: nn.Module) -> bool:
    return (type(module).__name__ == "Downsample2D" and getattr(module, "use_conv", False)
            and getattr(module, "padding", None) == 0)


@contextlib.contextmanager
def seamless(module: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily switch ``module``'s padded convolutions to ``mode``: "none", "both" or "x"."""
    if mode not in ("none", "both", "x"):
        raise ValueError(f"unknown seamless mode {mode!r}")
    patched: list[tuple[nn.Conv2d, str]] = []
    downsamplers: list[nn.Module] = []
    try:
        if mode != "none":
            for down in module.modules():
                if _pads_itself(down):
                    down.forward = _downsample_forward(down, mode)
                    downsamplers.append(down)
            for conv in module.modules():
                if not isinstance(conv, nn.Conv2d) or conv.padding == (0, 0) or isinstance(conv.padding, str):
                    continue
                patched.append((conv, conv.padding_mode))
                if mode == "both":
                    conv.padding_mode = "circular"
                else:
                    conv.forward = _x_only_forward(conv)
        yield module
    finally:
        for conv, padding_mode in patched:
            conv.padding_mode = padding_mode
            conv.__dict__.pop("forward", None)
        for down in downsamplers:
            down.__dict__.pop("forward", None)
