"""Make an existing image tile: repaint only a band around its wrap seams with the model in tile mode.

Rolled by half a side, the image's opposite edges meet in a cross through its middle; that cross (a band a
quarter of the side wide by default, feathered at its edges) is inpainted with the seamless graphs, so what
grows there is continuous across the old seam and across the rolled image's own wrap; rolling back puts the
band on the edges. Outside the band every pixel is the input's, exactly. The model works at its own size (the
image's aspect at the native area, as for any init, stretched rather than cropped so the band stays aligned);
the repainted band is resampled to the image's size and blended in with the feathered mask, so any resolution
works. See docs/conditioning.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidRequest


@dataclass
class SeamlessResult:
    image: np.ndarray      # H x W x 3 float32 in [0, 1], the input's size
    band: np.ndarray       # H x W weight of the generated pixels (0 = the input's own pixel, exactly)
    generation: object     # the engine's GenerationResult (request, seed, timings)
    notes: list[str] = field(default_factory=list)


def band_mask(height: int, width: int, band: float, tile: str = "both") -> np.ndarray:
    """The weight of repainted pixels in the rolled frame: 1 in a cross through the middle (``band`` of each
    side wide), ramping linearly to 0 over the outer half of each side of it; only the vertical arm for x."""
    if not 0.0 < band <= 0.5:
        raise InvalidRequest(f"band must be above 0 and at most 0.5 (of the side), got {band}", "band")

    def arm(n: int) -> np.ndarray:
        half = max(1.0, band * n / 2)
        ramp = half / 2
        distance = np.abs(np.arange(n) + 0.5 - n / 2)
        return np.clip((half - distance) / ramp, 0.0, 1.0).astype(np.float32)

    weight = np.broadcast_to(arm(width)[None, :], (height, width))
    if tile == "both":
        weight = np.maximum(weight, arm(height)[:, None])
    return np.ascontiguousarray(weight, dtype=np.float32)


def make_seamless(pipeline, image: np.ndarray, prompt: str = "", band: float = 0.25, tile: str = "both",
                  strength: float = 1.0, seed: int | None = None, steps: int | None = None,
                  guidance: float | None = None, negative_prompt: str = "", callback=None) -> SeamlessResult:
    """``image`` (H x W x 3, [0, 1]) made to wrap on both axes (or on x), changing only the band."""
    from .assets.resize import resize
    from .engine.inputs import default_size
    from .engine.pipeline import ImageInputs
    from .input_image import InputImage
    from .request import GenerateRequest

    if tile not in ("both", "x"):
        raise InvalidRequest(f"tile must be both or x for a seamless image, got {tile!r}", "tile")
    height, width = image.shape[:2]
    shift = (height // 2 if tile == "both" else 0, width // 2)
    rolled = np.roll(image.astype(np.float32), shift, axis=(0, 1))
    weight = band_mask(height, width, band, tile)
    m = pipeline.manifest
    gen_w, gen_h = default_size(width, height, m["native_size"], m["size_multiple"])
    # Stretched, not cropped, both ways: the band stays aligned and periodic at either size.
    init, mask = resize(rolled, gen_w, gen_h, tile), resize(weight, gen_w, gen_h, tile)
    request = GenerateRequest(
        prompt, negative_prompt=negative_prompt, width=gen_w, height=gen_h, steps=steps, guidance=guidance,
        seed=seed, tile=tile, strength=strength, keep_unmasked=False,
        init=InputImage.from_bytes(_png(init), "init"), mask=InputImage.from_bytes(_png(np.clip(mask, 0, 1)), "mask"))
    result = pipeline.generate(request, callback=callback)
    generated = resize(result.images[0], width, height, tile)
    notes = [f"repainted a {band:g} band around the seams at {gen_w}x{gen_h}, the model's size"
             + (f", resampled to {width}x{height} (Lanczos-3, tile={tile})" if (gen_w, gen_h) != (width, height)
                else "")]
    out = ImageInputs(rolled, weight).paste_back(np.clip(generated, 0.0, 1.0))
    unroll = (-shift[0], -shift[1])
    return SeamlessResult(np.roll(out, unroll, axis=(0, 1)), np.roll(weight, unroll, axis=(0, 1)), result,
                          notes + result.warnings)


def run_request(pipeline, request, callback=None):
    """Run a generate request: one with ``seamless_band`` makes its init tile (the sidecar's and the batch's
    way to :func:`make_seamless`), any other goes to the pipeline as it is. The result has the init's size, and
    its effective request names the init the caller sent (not the rolled frame the model saw)."""
    if request.seamless_band is None:
        return pipeline.generate(request, callback=callback)
    import dataclasses

    from .engine.inputs import decode

    result = make_seamless(pipeline, decode(request.init, "init"), prompt=request.prompt,
                           negative_prompt=request.negative_prompt, band=request.seamless_band,
                           tile=request.tile or "both", strength=request.strength or 1.0, seed=request.seed,
                           steps=request.steps, guidance=request.guidance, callback=callback)
    generation = result.generation
    effective = dataclasses.replace(generation.request, init=request.init, mask=None, keep_unmasked=True,
                                    strength=request.strength, seamless_band=request.seamless_band,
                                    target_size=request.target_size, format=request.format,
                                    bit_depth=request.bit_depth)
    return dataclasses.replace(generation, images=[result.image], request=effective,
                               warnings=list(result.notes))


def _png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
