"""The models the preferences offer (bpy-free): the packages in a models folder (each a folder with the
``model.json`` that `aigc-bridge export` writes), plus texture-mini, which ships with the runtime.

Only the manifests are read (never onnxruntime, never the weights), and a folder's listing is kept until
the folder changes, so drawing the preferences stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .messages import UserMessage, message

MANIFEST = "model.json"


@dataclass(frozen=True)
class ModelInfo:
    """One model package as the list shows it; ``path`` "" is the default model (texture-mini)."""

    name: str
    path: str
    family: str = ""
    size_bytes: int = 0
    native_size: tuple[int, ...] = ()
    tileable: bool = False
    controlnets: tuple[str, ...] = ()
    problem: str = ""          # why it cannot be used (an unreadable manifest), or ""
    builtin: bool = False

    @property
    def summary(self) -> str:
        if self.problem:
            return f"{self.name}: {self.problem}"
        size = "x".join(str(n) for n in self.native_size) or "?"
        parts = [self.family or "?", f"{self.size_bytes / 1e6:.1f} MB", f"{size} px",
                 "tileable" if self.tileable else "not tileable"]
        if self.controlnets:
            parts.append("ControlNet: " + ", ".join(self.controlnets))
        return f"{self.name} · " + " · ".join(parts)


@dataclass
class Listing:
    models: list[ModelInfo] = field(default_factory=list)
    error: UserMessage | None = None


_cache: dict[str, tuple[int, Listing]] = {}


def _folder_size(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(folder, name))
    return total


def read_package(root: Path, path: str | None = None, builtin: bool = False) -> ModelInfo:
    """A package's entry from its manifest (a broken manifest gives an entry saying why)."""
    path = str(root) if path is None else path
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return ModelInfo(root.name, path, problem=f"{MANIFEST} cannot be read ({exc})")
    graphs = (manifest.get("unet") or {}).get("graphs") or {}
    controlnets = manifest.get("controlnets") or {}
    return ModelInfo(str(manifest.get("model_id") or root.name), path, str(manifest.get("family") or ""),
                     _folder_size(root), tuple(manifest.get("native_size") or ()), "both" in graphs,
                     tuple(sorted(controlnets)) if isinstance(controlnets, dict) else (), builtin=builtin)


def builtin_model() -> ModelInfo | None:
    """texture-mini, inside the runtime the add-on imports (the bundled one, or the named environment's)."""
    try:
        from aigc_bridge.models import DEFAULT_MODEL
    except ImportError:
        return None
    import aigc_bridge.models

    root = Path(aigc_bridge.models.__file__).with_name(DEFAULT_MODEL)
    if not (root / MANIFEST).is_file():
        return None
    info = read_package(root, path="", builtin=True)
    return ModelInfo(f"{info.name} (built in)", "", info.family, info.size_bytes, info.native_size, info.tileable,
                     info.controlnets, info.problem, True)


def scan(folder: str) -> Listing:
    """texture-mini, then the packages directly inside ``folder`` (by name); a missing folder is an error
    in the listing, not an exception."""
    listing = Listing([m for m in (builtin_model(),) if m is not None])
    folder = folder.strip()
    if not folder:
        return listing
    root = Path(os.path.expanduser(folder))
    try:
        stamp = root.stat().st_mtime_ns
    except OSError:
        listing.error = message("models_folder", f"The models folder {root} does not exist")
        return listing
    if not root.is_dir():
        listing.error = message("models_folder", f"The models folder {root} is not a folder")
        return listing
    cached = _cache.get(str(root))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    found = [read_package(child) for child in sorted(root.iterdir(), key=lambda p: p.name.lower())
             if child.is_dir() and (child / MANIFEST).exists()]
    listing.models.extend(found)
    if not found:
        listing.error = message("models_folder", f"The models folder {root} holds no model packages (folders "
                                "with a model.json made by `aigc-bridge export`)")
    _cache[str(root)] = (stamp, listing)
    return listing


def forget() -> None:
    """Read the folders again on the next scan (after an export added a package)."""
    _cache.clear()
