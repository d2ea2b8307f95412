"""The model package: one manifest (``model.json``) at the root describing ONNX graphs, tokenizers and
the numbers the denoising loop needs. Specified in docs/model-package.md; written by the exporter,
read (and verified) here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelPackageError

MANIFEST_NAME = "model.json"
FORMAT_NAME = "aigc-bridge-model"
FORMAT_VERSION = 1
UPSCALER_FORMAT = "aigc-bridge-upscaler"  # an upscaler package (aigc_bridge.upscale): same layout, its own manifest
FAMILIES = ("sd", "sdxl", "sd3", "flux")
DIT_FAMILIES = ("sd3", "flux")  # transformer denoisers: flow matching, latent-space tiling
DISTILLATIONS = ("none", "turbo", "lcm")
TILE_GRAPHS = ("none", "both", "x")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_hash(files: dict[str, str]) -> str:
    """One hash that names the package: over the sorted (path, file hash) pairs, so it is cheap to
    recompute from the manifest and changes when any file changes."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class TextEncoderSpec:
    graph: str
    tokenizer: str
    max_length: int
    pad_token_id: int
    hidden_size: int
    pooled: bool  # the graph also returns a pooled embedding (SDXL's second encoder)
    # multi-vector textual-inversion tokens: "tok" -> "tok tok_1 tok_2", replaced in prompts before tokenising
    token_expansions: dict[str, str] = field(default_factory=dict)
    role: str = "clip"     # clip / clip_l / clip_g / t5: how a family combines its encoders
    optional: bool = False  # may be left out to save memory (SD 3's T5: its tokens are then zeros)


@dataclass(frozen=True)
class Package:
    """A verified package folder and its manifest: what model and upscaler packages have in common."""

    root: Path
    manifest: dict

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def package_hash(self) -> str:
        return self.manifest["package_hash"]

    def path(self, name: str) -> Path:
        return self.root / name


@dataclass(frozen=True)
class ModelPackage(Package):
    # Typed views of the manifest fields the runtime uses.

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def distillation(self) -> str:
        return self.manifest["distillation"]

    @property
    def text_encoders(self) -> list[TextEncoderSpec]:
        return [TextEncoderSpec(**spec) for spec in self.manifest["text_encoders"]]

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> ModelPackage:
        """Read and check a package; every problem names the file or manifest field at fault."""
        root = Path(root)
        manifest = read_manifest(root)
        _check_manifest(manifest)
        package = cls(root, manifest)
        if verify:
            package.verify()
        return package

    def verify(self) -> None:
        verify_files(self.root, self.manifest)


def read_manifest(root: str | Path) -> dict:
    """The JSON manifest of a package folder (model or upscaler), or an error naming what is missing."""
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ModelPackageError(f"model folder {root} does not exist", "model")
    if not manifest_path.is_file():
        raise ModelPackageError(
            f"{manifest_path} is missing: {root} is not an aigc-bridge model package "
            "(make one with `aigc-bridge export SOURCE OUT_DIR`)", MANIFEST_NAME)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPackageError(f"{manifest_path} is not valid JSON: {exc}", MANIFEST_NAME) from None
    if not isinstance(manifest, dict):
        raise ModelPackageError("the manifest must be a JSON object", MANIFEST_NAME)
    return manifest


def verify_files(root: Path, manifest: dict) -> None:
    """Every listed file is inside the package, present and unchanged, and the package hash matches."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("package_hash"), str):
        raise ModelPackageError("the manifest needs 'files' and 'package_hash'", "files")
    for name, expected in sorted(files.items()):
        path = root / name
        if not _inside(root, path):
            raise ModelPackageError(f"manifest lists {name!r}, which is outside the package", "files")
        if not path.is_file():
            raise ModelPackageError(f"{path} is missing from the model package", name)
        actual = sha256_file(path)
        if actual != expected:
            raise ModelPackageError(
                f"{path} is corrupt: its sha256 is {actual[:16]}..., the manifest says {expected[:16]}... "
                "(re-export or re-download the model)", name)
    if package_hash(files) != manifest["package_hash"]:
        raise ModelPackageError("package_hash does not match the listed files", "package_hash")


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


_REQUIRED = {
    "format": str, "format_version": int, "model_id": str, "family": str, "distillation": str,
    "latent_channels": int, "vae_scale_factor": int, "vae_scaling_factor": (int, float),
    "size_multiple": int, "native_size": list, "prediction_type": str, "scheduler": dict,
    "recommended": dict, "text_encoders": list, "unet": dict, "vae_decoder": dict, "files": dict,
    "package_hash": str,
}


def _check_manifest(m: object) -> None:
    if not isinstance(m, dict):
        raise ModelPackageError("the manifest must be a JSON object", MANIFEST_NAME)
    if m.get("format") == UPSCALER_FORMAT:
        raise ModelPackageError("this is an upscaler package, not a text-to-image model: use it with "
                                "`generate --upscale DIR` or `aigc-bridge upscale IMAGE --model DIR`", "format")
    for key, kind in _REQUIRED.items():
        if key not in m:
            raise ModelPackageError(f"the manifest has no {key!r}", key)
        if not isinstance(m[key], kind):
            raise ModelPackageError(f"manifest field {key!r} has the wrong type", key)
    if m["format"] != FORMAT_NAME:
        raise ModelPackageError(f"format is {m['format']!r}, expected {FORMAT_NAME!r}", "format")
    if m["format_version"] > FORMAT_VERSION:
        raise ModelPackageError(
            f"model package format {m['format_version']} is newer than this aigc-bridge understands "
            f"({FORMAT_VERSION}): upgrade aigc-bridge", "format_version")
    if m["family"] not in FAMILIES:
        raise ModelPackageError(f"unknown model family {m['family']!r}; known: {', '.join(FAMILIES)}", "family")
    if m["distillation"] not in DISTILLATIONS:
        raise ModelPackageError(
            f"unknown distillation {m['distillation']!r}; known: {', '.join(DISTILLATIONS)}", "distillation")
    if m["prediction_type"] not in ("epsilon", "v_prediction", "sample", "flow"):
        raise ModelPackageError(f"unknown prediction_type {m['prediction_type']!r}", "prediction_type")
    expected_encoders = {"sdxl": (2,), "sd3": (2, 3), "flux": (2,)}.get(m["family"], (1,))
    if len(m["text_encoders"]) not in expected_encoders:
        raise ModelPackageError(
            f"family {m['family']} needs {' or '.join(map(str, expected_encoders))} text encoder(s), the manifest "
            f"lists {len(m['text_encoders'])}", "text_encoders")
    for part in ("unet", "vae_decoder"):
        graphs = m[part].get("graphs")
        if not isinstance(graphs, dict) or "none" not in graphs:
            raise ModelPackageError(f"{part}.graphs must name at least the 'none' graph", f"{part}.graphs")
    if "upscaler" in m and (not isinstance(m["upscaler"], str) or not m["upscaler"]):
        raise ModelPackageError("upscaler must name the folder of the package's own upscaler", "upscaler")
