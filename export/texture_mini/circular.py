"""Circular padding for training: ``seamless`` (every padded Conv2d) plus the VAE encoder's downsamplers.

diffusers' encoder ``Downsample2D`` zero-pads one row and column itself (``F.pad(x, (0, 1, 0, 1))``)
before an unpadded stride-2 conv, which ``seamless`` cannot see. Left alone, the encoder would give the
edge of every training latent a zero-padding artefact that a circular UNet (shift-equivariant) cannot
reproduce; wrapped, encoding commutes with circular shifts of 2 pixels, so latent rolls are exact
augmentations. The exported package never encodes, so only training needs this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D
from torch import nn

from ..seamless import seamless


def _wrapped_forward(down: Downsample2D, mode: str):
    def forward(hidden_states, *args, **kwargs):
        if mode == "both":
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1), mode="circular")
        else:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 0), mode="circular")
            hidden_states = F.pad(hidden_states, (0, 0, 0, 1))
        return down.conv(hidden_states)

    return forward


@contextlib.contextmanager
def circular(module: nn.Module, mode: str) -> Iterator[nn.Module]:
    """``seamless(module, mode)`` that also wraps self-padding downsamplers ("none", "both" or "x")."""
    patched = []
    try:
        if mode != "none":
            for down in module.modules():
                if isinstance(down, Downsample2D) and down.use_conv and down.padding == 0 and down.norm is None:
                    down.forward = _wrapped_forward(down, mode)
                    patched.append(down)
        with seamless(module, mode):
            yield module
    finally:
        for down in patched:
            down.__dict__.pop("forward", None)
