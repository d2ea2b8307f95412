"""Upscalers on onnxruntime (no torch): super-resolution models exported by ``aigc-bridge export FILE.pth``
(docs/upscalers.md), with circular-padding variants so tileable input stays tileable, and tiled inference with
overlap under a memory bound. ``Upscaler.load(DIR)`` gives an object the asset writers call to reach a target
size (``aigc_bridge.assets.resize.fit``).
"""

from .package import UpscalerPackage
from .runner import Upscaler, load_upscaler, own_upscaler

__all__ = ["Upscaler", "UpscalerPackage", "load_upscaler", "own_upscaler"]
