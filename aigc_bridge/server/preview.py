"""Progress previews: the current latents projected linearly to RGB, at latent resolution, as a small PNG.

Why linear: decoding with the VAE every step would cost as much as a step; a fixed 4 -> 3 projection
(the widely used approximations of the SD 1.x / SDXL latent spaces) costs microseconds and shows the
composition forming. Only for 4-channel latents of the known families; others get no preview.
"""

from __future__ import annotations

import numpy as np

from ..assets.writers import png_bytes

# rows: latent channels, columns: R, G, B (applied to the scaled latents the denoising loop works on)
_FACTORS = {
    "sd": (np.array([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
                     [-0.2120, -0.2616, -0.7177]], dtype=np.float32), np.zeros(3, dtype=np.float32)),
    "sdxl": (np.array([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
                       [-0.3165, -0.2492, -0.2188]], dtype=np.float32),
             np.array([0.1084, -0.0175, -0.0011], dtype=np.float32)),
}
MAX_PREVIEW_SIDE = 128


def latent_preview(latents: np.ndarray, family: str) -> bytes | None:
    """PNG bytes of image 0 of ``latents`` (batch, 4, h, w), at most MAX_PREVIEW_SIDE pixels a side;
    None when this family's latent space has no known projection."""
    if family not in _FACTORS or latents.ndim != 4 or latents.shape[1] != 4:
        return None
    factors, bias = _FACTORS[family]
    rgb = np.tensordot(latents[0].astype(np.float32), factors, axes=([0], [0])) + bias  # h x w x 3
    stride = max(1, -(-max(rgb.shape[:2]) // MAX_PREVIEW_SIDE))
    rgb = rgb[::stride, ::stride]
    return png_bytes(np.clip((rgb + 1.0) / 2.0, 0.0, 1.0))
