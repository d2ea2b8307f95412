"""The one entry point from a generated image to game-ready outputs, for the CLI, the sidecar and batch.

``build_outputs`` makes every file in memory (bytes, name, role, colour space), which is what the
sidecar sends; ``write_outputs`` writes the same bytes beside ``output`` as one transaction (all files or
none). Names, roles and colour spaces are documented in docs/outputs.md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest
from ..request import KINDS, MAX_SIDE, check_target_size, is_power_of_two
from .colour import DATA, LINEAR_REC709, SRGB, srgb_to_linear
from .gltf import material_glb, skydome_glb
from .panorama import (
    CUBE_FACE_ALIASES,
    CUBE_FACES,
    DEFAULT_POLE_CAP_DEGREES,
    check_equirect,
    close_seam_x,
    equirect_to_cube,
    soften_poles,
)
from .pbr import DEFAULT_DEPTH, check_convention, normal_from_height, pbr_maps
from .periodic import wrap_axes
from .provenance import provenance_bytes
from .resize import Upscaler, fit
from .writers import exr_bytes, png_bytes, write_all_atomic

MIN_SIDE = 8
PNG, EXR, GLB, JSON = "image/png", "image/x-exr", "model/gltf-binary", "application/json"


@dataclass(frozen=True)
class BuiltOutput:
    """One output file in memory: what the sidecar sends and ``write_outputs`` writes."""

    role: str                # image, image_linear, normal, roughness, height, ao, orm, material, cube_px...,
    filename: str            # skydome, provenance
    data: bytes
    mime: str
    colour_space: str | None  # srgb | data | linear_rec709; None for GLB and JSON
    width: int | None = None
    height: int | None = None
    bit_depth: int | None = None  # PNG: 8 / 16 (integer); EXR: 16 (half) / 32 (float)

    def describe(self) -> dict:
        info = asdict(self)
        del info["data"]
        info["bytes"] = len(self.data)
        return info


@dataclass(frozen=True)
class OutputFile:
    """One file ``write_outputs`` wrote."""

    path: Path
    role: str
    mime: str
    colour_space: str | None
    width: int | None
    height: int | None
    bit_depth: int | None


def build_outputs(image: np.ndarray, metadata: dict, name: str, *, kind: str = "texture", pbr: bool = False,
                  target_size: int | None = None, normal_convention: str = "opengl", bit_depth: int = 8,
                  exr: bool = False, upscaler: Upscaler | None = None) -> list[BuiltOutput]:
    """Every file of one output set, in memory; the provenance JSON (listing the others) comes last.

    ``image`` is H x W x 3 sRGB in [0, 1] (float) or uint8; ``metadata`` is the engine's
    ``GenerationResult.metadata(i)`` (its ``tile`` says which axes wrap); ``name`` is the base file name
    without suffix. ``target_size`` (engine mode) is the output width, a power of two. ``upscaler``
    (``aigc_bridge.upscale.Upscaler``) takes the image there, or by its own scale without ``target_size``;
    PBR maps are derived afterwards, at the full size.
    """
    start = time.perf_counter()
    pixels = _check(image, metadata, name, kind, pbr, target_size, normal_convention, bit_depth, exr)
    tile = metadata.get("tile") or "none"
    wrap_axes(tile)  # validates
    notes: list[str] = []
    settings: dict = {"kind": kind, "pbr": pbr, "target_size": target_size, "bit_depth": bit_depth, "exr": exr}
    if upscaler is not None:
        settings["upscaler"] = upscaler.describe() if hasattr(upscaler, "describe") else {"model_id": upscaler.name}
    if kind == "texture":
        files, extra = _texture(pixels, name, tile, pbr, target_size, normal_convention, bit_depth, exr, notes,
                                upscaler)
    else:
        files, extra = _backdrop(pixels, name, tile, target_size, bit_depth, exr, notes, upscaler)
    settings.update(extra)
    settings["processing"] = notes
    doc_metadata = {**metadata, "assets_ms": round((time.perf_counter() - start) * 1000.0, 1)}
    files.append(BuiltOutput("provenance", f"{name}.json", provenance_bytes(
        doc_metadata, settings, [f.describe() for f in files]), JSON, None))
    return files


def write_outputs(image: np.ndarray, metadata: dict, output: str | Path, *, kind: str = "texture",
                  pbr: bool = False, target_size: int | None = None, normal_convention: str = "opengl",
                  bit_depth: int = 8, exr: bool = False, upscaler: Upscaler | None = None) -> list[OutputFile]:
    """Write the output set named after ``output`` (``wall.png`` -> wall.png, wall_normal.png, ...,
    wall.json) atomically: on any error no file of the set is left behind. ``.exr`` implies ``exr``."""
    output = Path(output)
    if output.suffix.lower() not in (".png", ".exr"):
        raise InvalidRequest(f"output must end in .png or .exr, got {output.name!r}", "output")
    folder = output.parent
    if folder.exists() and not folder.is_dir():
        raise InvalidRequest(f"cannot write into {folder}: it is not a folder", "output")
    built = build_outputs(image, metadata, output.stem, kind=kind, pbr=pbr, target_size=target_size,
                          normal_convention=normal_convention, bit_depth=bit_depth,
                          exr=exr or output.suffix.lower() == ".exr", upscaler=upscaler)
    paths = write_all_atomic([(folder / b.filename, b.data) for b in built])
    return [OutputFile(p, b.role, b.mime, b.colour_space, b.width, b.height, b.bit_depth)
            for p, b in zip(paths, built)]


# --- the two kinds ----------------------------------------------------------------------------------------


def _texture(image, name, tile, pbr, target_size, convention, bit_depth, exr, notes, upscaler):
    h, w = image.shape[:2]
    size: tuple[int | None, int | None] = (None, None)
    if target_size is not None:
        height = target_size * h / w
        if height != int(height) or not is_power_of_two(int(height)) or height > MAX_SIDE:
            raise InvalidRequest(f"target_size {target_size} would make a {target_size}x{height:g} texture from "
                                 f"a {w}x{h} image: the height must be a power of two too, at most {MAX_SIDE} "
                                 f"(use a 1:1, 2:1 or 1:2 ... image)", "target_size")
        size = (target_size, int(height))
    elif upscaler is not None and max(h, w) * upscaler.scale > MAX_SIDE:
        raise InvalidRequest(f"upscaling {w}x{h} x{upscaler.scale} would exceed {MAX_SIDE} px", "image")
    image, done = fit(image, *size, tile, upscaler)
    notes += done
    files = [_png("image", f"{name}.png", image, SRGB, bit_depth)]
    if exr:
        files.append(_exr("image_linear", f"{name}.exr", srgb_to_linear(image), LINEAR_REC709))
    extra: dict = {"tile": tile, "width": image.shape[1], "height": image.shape[0]}
    if not pbr:
        return files, extra
    maps = pbr_maps(image, tile=tile, normal_convention=convention)
    files += [
        _png("normal", f"{name}_normal.png", maps.normal, DATA, bit_depth),
        _png("roughness", f"{name}_roughness.png", maps.roughness, DATA, bit_depth),
        _exr("height", f"{name}_height.exr", maps.height, DATA) if exr
        else _png("height", f"{name}_height.png", maps.height, DATA, 16),
        _png("ao", f"{name}_ao.png", maps.ao, DATA, bit_depth),
        _png("orm", f"{name}_orm.png", maps.orm, DATA, bit_depth),
    ]
    # glTF wants 8-bit textures and +Y normals: reuse the PNGs above when they are exactly that
    by_role = {f.role: f.data for f in files} if bit_depth == 8 else {}
    if convention != "opengl":
        by_role["normal"] = png_bytes(normal_from_height(maps.height, tile=tile))
    glb = material_glb(by_role.get("image") or png_bytes(image), by_role.get("normal") or png_bytes(maps.normal),
                       by_role.get("orm") or png_bytes(maps.orm), name=name)
    files.append(BuiltOutput("material", f"{name}_material.glb", glb, GLB, None))
    extra.update(normal_convention=convention, relief_depth=DEFAULT_DEPTH, metallic=0.0,
                 orm="R occlusion, G roughness, B metallic")
    notes.append("PBR maps derived from the albedo (periodic filters: every map tiles as the albedo does)")
    return files, extra


def _backdrop(image, name, tile, target_size, bit_depth, exr, notes, upscaler):
    check_equirect(image)
    if tile not in ("x", "both"):
        image = close_seam_x(image)
        notes.append("x seam closed by a cross-fade (the image was generated without x wrap)")
    h, w = image.shape[:2]
    if target_size is None and upscaler is not None and w * upscaler.scale > MAX_SIDE:
        raise InvalidRequest(f"upscaling {w}x{h} x{upscaler.scale} would exceed {MAX_SIDE} px", "image")
    image, done = fit(image, target_size, None if target_size is None else target_size // 2, "x", upscaler)
    notes += done
    image = np.clip(soften_poles(image), 0.0, 1.0)
    notes.append(f"poles softened within {DEFAULT_POLE_CAP_DEGREES:g} degrees (outermost rows = their mean)")
    files = [_png("image", f"{name}.png", image, SRGB, bit_depth)]
    if exr:
        files.append(_exr("image_linear", f"{name}.exr", srgb_to_linear(image), LINEAR_REC709, latlong=True))
    faces = equirect_to_cube(image)
    for face in CUBE_FACES:
        if exr:
            files.append(_exr(f"cube_{face}", f"{name}_{face}.exr", srgb_to_linear(faces[face]), LINEAR_REC709))
        else:
            files.append(_png(f"cube_{face}", f"{name}_{face}.png", faces[face], SRGB, bit_depth))
    texture = files[0].data if bit_depth == 8 else png_bytes(image)  # glTF base colour: 8-bit sRGB
    files.append(BuiltOutput("skydome", f"{name}_skydome.glb", skydome_glb(texture, name=name), GLB, None))
    extra = {"tile": "x", "width": image.shape[1], "height": image.shape[0], "dynamic_range": "ldr",
             "cube_faces": {"size": image.shape[1] // 4, "order": list(CUBE_FACES), "aliases": CUBE_FACE_ALIASES,
                            "convention": "OpenGL cube-map table; x right, y up, z = centre of the panorama"},
             "skydome": {"radius_m": 50.0, "forward": "-Z (glTF) = centre of the panorama", "unlit": True}}
    return files, extra


# --- helpers ----------------------------------------------------------------------------------------------


def _png(role: str, filename: str, image: np.ndarray, colour_space: str, bit_depth: int) -> BuiltOutput:
    return BuiltOutput(role, filename, png_bytes(image, bit_depth), PNG, colour_space, image.shape[1],
                       image.shape[0], bit_depth)


def _exr(role: str, filename: str, image: np.ndarray, colour_space: str, latlong: bool = False) -> BuiltOutput:
    colour = colour_space != DATA
    data = exr_bytes(image, colour=colour, latlong=latlong)
    return BuiltOutput(role, filename, data, EXR, colour_space, image.shape[1], image.shape[0], 16 if colour else 32)


def _check(image, metadata, name, kind, pbr, target_size, convention, bit_depth, exr) -> np.ndarray:
    """Validate at the edge; return the image as float32 in [0, 1]."""
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise InvalidRequest(f"the output name must be a plain file name, got {name!r}", "output")
    if not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be a dict (GenerationResult.metadata(i))", "metadata")
    if kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}; got {kind!r}", "kind")
    if not isinstance(pbr, bool):
        raise InvalidRequest(f"pbr must be true or false, got {pbr!r}", "pbr")
    if pbr and kind == "backdrop":
        raise InvalidRequest("PBR maps are for textures; a backdrop has none (use kind=texture)", "pbr")
    if not isinstance(exr, bool):
        raise InvalidRequest(f"exr must be true or false, got {exr!r}", "exr")
    if isinstance(bit_depth, bool) or bit_depth not in (8, 16):
        raise InvalidRequest(f"bit_depth must be 8 or 16, got {bit_depth!r}", "bit_depth")
    check_convention(convention)
    if target_size is not None:
        check_target_size(target_size)
    if not isinstance(image, np.ndarray):
        raise InvalidRequest(f"image must be a numpy array, got {type(image).__name__}", "image")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidRequest(f"image must be H x W x 3 (RGB), got shape {image.shape}", "image")
    if image.dtype == np.uint8:
        pixels = image.astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        pixels = image.astype(np.float32)
        if not np.isfinite(pixels).all():
            raise InvalidRequest("image has NaN or infinite pixels", "image")
        pixels = np.clip(pixels, 0.0, 1.0)
    else:
        raise InvalidRequest(f"image must be float in [0, 1] or uint8, got {image.dtype}", "image")
    h, w = pixels.shape[:2]
    for label, side in (("width", w), ("height", h)):
        if side < MIN_SIDE:
            raise InvalidRequest(f"image {label} {side} is too small (at least {MIN_SIDE} px)", "image")
        if side % 2:
            raise InvalidRequest(f"image {label} {side} is odd: mip levels, cube faces and 2:1 backdrops "
                                 f"need even sizes", "image")
    return pixels
