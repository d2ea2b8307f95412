"""Seamless (circular) padding for every padded Conv2d of a UNet or VAE.

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


@contextlib.contextmanager
def seamless(module: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily switch ``module``'s padded convolutions to ``mode``: "none", "both" or "x"."""
    if mode not in ("none", "both", "x"):
        raise ValueError(f"unknown seamless mode {mode!r}")
    patched: list[tuple[nn.Conv2d, str]] = []
    try:
        if mode != "none":
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
