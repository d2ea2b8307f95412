"""The triangle mesh the projection works on, checked once: shapes, limits, degenerate faces, UV problems.

Positions are in world space (several objects share the views, so they must share a frame), triangles index
the positions, and UVs are per corner (``uvs[t, k]`` is the UV of corner k of triangle t), as Blender stores
them per loop: a vertex on a UV seam has a UV per face. UVs follow Blender and glTF-in-Blender: u right, v up,
(0, 0) the texture's bottom-left corner; textures here are arrays with the top row first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..errors import InvalidRequest

MAX_TRIANGLES = 2_000_000
# Faces whose area is below this fraction of the squared bounding-box diagonal cover no surface.
DEGENERATE_AREA = 1e-12
# The share of the surface that may be unbakeable (no UV area, or UVs outside 0..1) before it is an error.
MAX_UNBAKEABLE = 0.01
UV_SLACK = 1e-5  # float32 UVs from Blender land at 1.0000001


@dataclass(frozen=True)
class Mesh:
    """A validated mesh: float64 positions (V, 3), int32 triangles (T, 3), float64 corner UVs (T, 3, 2).
    Build it with ``Mesh.checked``; ``warnings`` says what was done to the input."""

    name: str
    positions: np.ndarray
    triangles: np.ndarray
    uvs: np.ndarray
    warnings: tuple[str, ...] = field(default=())

    @classmethod
    def checked(cls, positions: object, triangles: object, uvs: object, name: str = "mesh", *,
                max_triangles: int = MAX_TRIANGLES) -> Mesh:
        """Validate arrays from outside (Blender, the wire, a file). Errors name the field and the limit;
        zero-area faces are dropped with a warning, UV problems are warned about (or refused when a large
        part of the surface cannot be baked)."""
        where = f"mesh {name!r}"
        pos = _array(positions, f"{where} positions", np.float64, (None, 3))
        tri = _array(triangles, f"{where} triangles", np.int64, (None, 3))
        uv = _array(uvs, f"{where} uvs", np.float64, (None, 3, 2))
        if len(tri) == 0:
            raise InvalidRequest(f"{where} has no triangles", f"{where} triangles")
        if len(tri) > max_triangles:
            raise InvalidRequest(f"{where} has {len(tri):,} triangles; at most {max_triangles:,} can be "
                                 "projected (decimate it, or texture its parts separately)", f"{where} triangles")
        if len(uv) != len(tri):
            raise InvalidRequest(f"{where} uvs must have one (3, 2) entry per triangle: {len(uv)} for "
                                 f"{len(tri)} triangles", f"{where} uvs")
        for label, values in (("positions", pos), ("uvs", uv)):
            if not np.isfinite(values).all():
                raise InvalidRequest(f"{where} {label} contain NaN or infinite values", f"{where} {label}")
        if tri.min() < 0 or tri.max() >= len(pos):
            raise InvalidRequest(f"{where} triangles index vertices 0..{len(pos) - 1}, found "
                                 f"{tri.min()}..{tri.max()}", f"{where} triangles")

        notes: list[str] = []
        corners = pos[tri]
        area = face_areas(corners)
        extent = float(np.linalg.norm(pos.max(axis=0) - pos.min(axis=0)))
        degenerate = area <= DEGENERATE_AREA * max(extent, 1e-30) ** 2
        if degenerate.all():
            raise InvalidRequest(f"{where}: every face has zero area (a point or a line): nothing to texture",
                                 f"{where} triangles")
        if degenerate.any():
            notes.append(f"{where}: dropped {int(degenerate.sum()):,} zero-area faces (they cover no surface)")
            keep = ~degenerate
            tri, uv, area = tri[keep], uv[keep], area[keep]
        uv_area = signed_uv_areas(uv)
        notes += _uv_notes(where, area, uv, uv_area)
        return cls(name, np.ascontiguousarray(pos), tri.astype(np.int32), np.ascontiguousarray(uv),
                   tuple(notes))

    @cached_property
    def corners(self) -> np.ndarray:
        """(T, 3, 3) positions of each triangle's corners."""
        return self.positions[self.triangles]

    @cached_property
    def normals(self) -> np.ndarray:
        """(T, 3) unit face normals (by winding)."""
        c = self.corners
        n = np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0])
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    @cached_property
    def areas(self) -> np.ndarray:
        return face_areas(self.corners)

    @cached_property
    def welded(self) -> np.ndarray:
        """(T, 3) vertex ids that are equal exactly where positions are (split vertices merged)."""
        _, inverse = np.unique(self.positions, axis=0, return_inverse=True)
        return inverse.reshape(-1)[self.triangles]


    @cached_property
    def vertex_graph(self) -> tuple[np.ndarray, np.ndarray]:
        """The welded vertices' neighbours as CSR (indptr, indices): vertex v's are indices[indptr[v]:indptr[v + 1]]."""
        t = self.welded
        src = np.concatenate([t[:, 0], t[:, 1], t[:, 2], t[:, 1], t[:, 2], t[:, 0]])
        dst = np.concatenate([t[:, 1], t[:, 2], t[:, 0], t[:, 0], t[:, 1], t[:, 2]])
        order = np.argsort(src, kind="stable")
        indptr = np.zeros(int(t.max()) + 2, np.int64)
        np.cumsum(np.bincount(src, minlength=int(t.max()) + 1), out=indptr[1:])
        return indptr, dst[order]


def face_areas(corners: np.ndarray) -> np.ndarray:
    return 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)


def signed_uv_areas(uv: np.ndarray) -> np.ndarray:
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    return 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


def _array(value: object, label: str, dtype: type, shape: tuple[int | None, ...]) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{label} must be an array: {exc}", label) from exc
    want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
        raise InvalidRequest(f"{label} must have shape {want}, got {arr.shape}", label)
    kind = "iu" if np.issubdtype(dtype, np.integer) else "iuf"
    if arr.dtype.kind not in kind:
        raise InvalidRequest(f"{label} must be {'integers' if kind == 'iu' else 'numbers'}, got {arr.dtype}",
                             label)
    return arr.astype(dtype, copy=False)


def _uv_notes(where: str, area: np.ndarray, uv: np.ndarray, uv_area: np.ndarray) -> list[str]:
    """What the UV map cannot hold (refused above MAX_UNBAKEABLE of the surface) and mirrored faces (fine
    for a colour texture: said so). Overlaps are found by the UV rasteriser (texels.py), which sees texels."""
    total = float(area.sum())
    notes = []
    flat = np.abs(uv_area) <= 1e-14
    outside = ((uv < -UV_SLACK) | (uv > 1.0 + UV_SLACK)).any(axis=(1, 2)) & ~flat
    for mask, what, fix in ((flat, "have no area in the UV map", "unwrap it (e.g. Smart UV Project)"),
                            (outside, "have UVs outside 0..1 (UDIM tiles or a repeating texture)",
                             "pack the UVs into 0..1")):
        if mask.any():
            share = float(area[mask].sum()) / total
            text = (f"{where}: {int(mask.sum()):,} faces ({share:.1%} of the surface) {what}: a baked texture "
                    f"cannot hold them")
            if share > MAX_UNBAKEABLE:
                raise InvalidRequest(f"{text}; {fix}", f"{where} uvs")
            notes.append(f"{text}; they show the texels around them")
    sign = np.sign(uv_area[~flat])
    positive, negative = int((sign > 0).sum()), int((sign < 0).sum())
    if positive and negative:
        flipped = min(positive, negative)
        notes.append(f"{where}: {flipped:,} faces have mirrored UVs (wound the other way round in the UV map): "
                     "baked as they are (a colour texture does not mind); a normal map baked for them would "
                     "need their tangents flipped")
    return notes
