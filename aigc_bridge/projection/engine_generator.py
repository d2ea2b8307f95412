"""The loop's generator on the real engine: each view becomes one GenerateRequest run by ``Pipeline.generate``.

How a view is conditioned depends on what the model package has (``conditioning_mode``):
- ``controlnet``: a depth ControlNet in the package (``manifest["controlnets"]``, named "depth" or with
  "depth" in its name) takes the view's depth image as ``controls``;
- ``depth``: the SD 2 depth model's UNet takes it as ``depth``;
- ``text``: neither (texture-mini): text, image to image (``init`` + ``strength``) and inpainting (``mask``)
  alone; the shape then reaches the model only through what earlier views baked.
The mode is reported (``EngineGenerator.mode``, ``describe_mode``) so the panel and batch can say so.

The projection core never imports this module's engine: the sidecar and batch build an ``EngineGenerator``
around their loaded ``Pipeline`` and pass it to ``loop.texture_meshes``. Only the request fields already in
``request.py`` are used, so the engine's own checks decide what a model accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..assets.writers import png_bytes
from ..errors import Cancelled
from ..input_image import InputImage
from ..request import ControlInput, GenerateRequest

CONTROLNET, DEPTH, TEXT = "controlnet", "depth", "text"
MODES = (CONTROLNET, DEPTH, TEXT)


def depth_controlnet(manifest: dict) -> str | None:
    """The name of the package's depth ControlNet, or None."""
    names = list(manifest.get("controlnets") or {})
    for name in names:
        if name == "depth":
            return name
    return next((n for n in names if "depth" in n), None)


def takes_depth(manifest: dict) -> bool:
    """The UNet itself takes a depth map (the SD 2 depth model)."""
    return (manifest.get("unet") or {}).get("conditioning") == "depth"


def conditioning_mode(manifest: dict) -> str:
    if depth_controlnet(manifest):
        return CONTROLNET
    if takes_depth(manifest):
        return DEPTH
    return TEXT


def describe_mode(mode: str) -> str:
    return {CONTROLNET: "depth ControlNet: every view follows the mesh's shape",
            DEPTH: "the model's own depth input: every view follows the mesh's shape",
            TEXT: "this model has no depth ControlNet: views are made from the text, image to image and "
                  "inpainting alone (the first view does not follow the shape)"}[mode]


def image_input(image: np.ndarray, name: str) -> InputImage:
    """An (H, W) or (H, W, 3) float 0..1 array as the PNG a request carries."""
    arr = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return InputImage.from_bytes(png_bytes(arr), name)


def open_background(init: np.ndarray, mask: np.ndarray | None, depth: np.ndarray) -> tuple[np.ndarray,
                                                                                          np.ndarray | None]:
    """The init image and mask as the model gets them: pixels off the objects (depth 0) take the objects'
    mean colour and are repainted too, so the model paints a whole picture of the texture around the kept
    part instead of taking a flat backdrop as part of it (measured on texture-mini: a grey backdrop turned
    "red brick" views yellow). Baking reads only the objects' pixels, so nothing else changes."""
    background = depth <= 0
    if not background.any() or background.all():
        return init, mask
    init = np.array(init, np.float32, copy=True)
    init[background] = init[~background].mean(axis=0)
    if mask is not None:
        mask = np.maximum(mask, background.astype(np.float32))
    return init, mask


@dataclass
class EngineGenerator:
    """A ``loop.Generator`` over a loaded ``Pipeline``. ``control_scale``: how strongly the depth steers
    (ControlNet conditioning scale). ``cancelled``: checked between denoising steps, so a cancel inside a
    view stops within one step. ``requests`` keeps every request sent (for reports and tests)."""

    pipeline: object
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str = ""
    control_scale: float = 1.0
    cancelled: Callable[[], bool] | None = None
    on_step: Callable[[int, int], None] | None = None
    requests: list[GenerateRequest] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return conditioning_mode(self.pipeline.manifest)

    def request(self, *, prompt: str, depth: np.ndarray, init: np.ndarray | None, mask: np.ndarray | None,
                strength: float, seed: int, size: tuple[int, int]) -> GenerateRequest:
        """The GenerateRequest for one view (see the module doc for the conditioning)."""
        width, height = size
        fields: dict = {}
        mode = self.mode
        if mode == CONTROLNET:
            fields["controls"] = (ControlInput(depth_controlnet(self.pipeline.manifest),
                                               image_input(depth, "controls[0].image"), self.control_scale),)
        elif mode == DEPTH:
            fields["depth"] = image_input(depth, "depth")
        if init is not None:
            init, mask = open_background(init, mask, depth)
            fields["init"] = image_input(init, "init")
            fields["strength"] = float(strength)
            if mask is not None:
                fields["mask"] = image_input(mask, "mask")
        return GenerateRequest(prompt=prompt, negative_prompt=self.negative_prompt, width=width, height=height,
                               steps=self.steps, guidance=self.guidance, seed=seed, tile="none", **fields)

    def __call__(self, *, prompt: str, depth: np.ndarray, init: np.ndarray | None, mask: np.ndarray | None,
                 strength: float, seed: int, size: tuple[int, int]) -> np.ndarray:
        req = self.request(prompt=prompt, depth=depth, init=init, mask=mask, strength=strength, seed=seed,
                           size=size)
        self.requests.append(req)

        def callback(event) -> bool:
            if self.on_step is not None:
                self.on_step(event.step, event.total)
            return not (self.cancelled is not None and self.cancelled())

        if self.cancelled is not None and self.cancelled():
            raise Cancelled("cancelled before the view was generated")
        result = self.pipeline.generate(req, callback=callback)
        return result.images[0]


__all__ = ["CONTROLNET", "DEPTH", "MODES", "TEXT", "EngineGenerator", "conditioning_mode", "depth_controlnet",
           "describe_mode", "image_input"]
