"""The upscaler package: ``model.json`` (format ``aigc-bridge-upscaler``) beside its ONNX graphs and one shared
weights file, written by ``aigc_bridge_export.upscaler_export`` and specified in docs/upscalers.md."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..engine.package import UPSCALER_FORMAT, Package, read_manifest, verify_files
from ..errors import ModelPackageError

UPSCALER_FORMAT_VERSION = 1
EXACT_LIMIT = 1e-4       # a tile variant must commute with circular shifts to this (float rounding)
DEFAULT_CONTEXT = 16     # input pixels of overlap each side of a tile (Real-ESRGAN's default is 10)

_REQUIRED = {"format": str, "format_version": int, "model_id": str, "architecture": str, "scale": int,
             "size_requirements": dict, "graphs": dict, "context": int, "memory": dict, "files": dict,
             "package_hash": str}


@dataclass(frozen=True)
class UpscalerPackage(Package):
    @property
    def scale(self) -> int:
        return self.manifest["scale"]

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> UpscalerPackage:
        root = Path(root)
        manifest = read_manifest(root)
        if manifest.get("format") != UPSCALER_FORMAT:
            what = "a text-to-image model" if manifest.get("format") == "aigc-bridge-model" else "not an upscaler"
            raise ModelPackageError(f"{root} is {what} (format {manifest.get('format')!r}); an upscaler package "
                                    "comes from `aigc-bridge export MODEL.pth DIR`", "upscaler")
        for key, kind in _REQUIRED.items():
            if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
                raise ModelPackageError(f"upscaler manifest field {key!r} is missing or has the wrong type", key)
        if manifest["format_version"] > UPSCALER_FORMAT_VERSION:
            raise ModelPackageError(f"upscaler package format {manifest['format_version']} is newer than this "
                                    f"aigc-bridge understands ({UPSCALER_FORMAT_VERSION}): upgrade aigc-bridge",
                                    "format_version")
        if manifest["scale"] < 2 or "none" not in manifest["graphs"]:
            raise ModelPackageError("an upscaler needs scale >= 2 and a 'none' graph", "graphs")
        package = cls(root, manifest)
        if verify:
            verify_files(root, manifest)
        return package
