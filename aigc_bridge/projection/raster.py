"""A vectorised triangle rasteriser in numpy: which triangles cover which pixel centres, with barycentrics.

One routine serves the views (a pinhole or orthographic camera) and the UV space (texel centres). Each
triangle is three edge functions, each linear in the pixel's plane coordinates (rx, ry):
``e_k = a_k * rx + b_k * ry + c_k``. For a pinhole camera the plane coordinates are the ray (rx, ry, -1)
and e_k is the triple product of the ray with the edge opposite corner k, so e / sum(e) are the
perspective-correct barycentrics of the point the ray hits (homogeneous rasterisation, Olano and Greer
1997); triangles that cross the camera plane need no clipping, the caller rejects hits behind it. In 2D
(orthographic, UV) e_k are the usual edge functions.

Exactness where triangles meet: an edge's coefficients are computed from its two corners in a canonical
order (lexicographic) and negated for the other winding, so the two triangles sharing an edge evaluate
exactly opposite values there (IEEE products and differences are exactly antisymmetric). A pixel centre
exactly on an edge (common in UV layouts aligned to the texel grid) then goes to exactly one of them by
the top-left rule on the coefficients: no cracks, no double coverage, and double coverage means
overlapping triangles.

Work is proportional to the triangles' bounding boxes: per triangle, its box's pixels are generated with
``np.repeat`` (no Python loop over triangles), in chunks of bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK = 1 << 21  # candidate pixels per batch: ~100 MB of temporaries at most


@dataclass
class Fragments:
    """Pixels covered by triangles: flat pixel index (row * width + col), triangle, and the unnormalised
    barycentric weights e (the caller divides by their sum)."""

    pixel: np.ndarray   # int64 (N,)
    triangle: np.ndarray  # int32 (N,)
    weights: np.ndarray   # float64 (N, 3)


def edge_coefficients(corners: np.ndarray, *, pinhole: bool) -> np.ndarray:
    """(T, 3, 3): for corner k, the coefficients (a, b, c) of the edge function opposite it.

    ``corners`` (T, 3, 3) are camera-space points (pinhole) or (T, 3, 2) plane points (orthographic, UV).
    Each edge is computed from its corners in lexicographic order, so bit-identical corners (a shared
    edge, whatever the vertex ids) give bit-identical, negated coefficients."""
    coef = np.empty((len(corners), 3, 3), np.float64)
    for k in range(3):
        i, j = (k + 1) % 3, (k + 2) % 3
        p, q = corners[:, i], corners[:, j]
        swap = np.zeros(len(corners), bool)
        decided = np.zeros(len(corners), bool)
        for axis in range(corners.shape[2]):
            swap |= ~decided & (p[:, axis] > q[:, axis])
            decided |= p[:, axis] != q[:, axis]
        p, q = np.where(swap[:, None], q, p), np.where(swap[:, None], p, q)
        sign = np.where(swap, -1.0, 1.0)[:, None]
        if pinhole:  # e = ray . (p x q), ray = (rx, ry, -1)
            cross = np.cross(p, q)
            coef[:, k] = sign * np.stack([cross[:, 0], cross[:, 1], -cross[:, 2]], axis=1)
        else:  # e = (q - p) x (r - p), z component, expanded in r
            coef[:, k] = sign * np.stack([p[:, 1] - q[:, 1], q[:, 0] - p[:, 0],
                                          p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]], axis=1)
    return coef


def rasterize(coef: np.ndarray, boxes: np.ndarray, rx: np.ndarray, ry: np.ndarray,
              triangles: np.ndarray | None = None) -> Fragments:
    """Every (pixel, triangle) pair whose pixel centre is inside the triangle.

    ``coef`` (T, 3, 3) from ``edge_coefficients``; ``boxes`` (T, 4) int: col0, row0, col1, row1 (exclusive)
    already clipped to the image; ``rx`` (W,) and ``ry`` (H,) the plane coordinates of column and row
    centres; ``triangles`` (T,) the ids to report (default 0..T-1)."""
    width = len(rx)
    ids = np.arange(len(coef), dtype=np.int32) if triangles is None else triangles.astype(np.int32)
    bw = np.maximum(boxes[:, 2] - boxes[:, 0], 0).astype(np.int64)
    bh = np.maximum(boxes[:, 3] - boxes[:, 1], 0).astype(np.int64)
    counts = bw * bh
    keep = counts > 0
    coef, boxes, ids, bw, counts = coef[keep], boxes[keep], ids[keep], bw[keep], counts[keep]
    # One 1-D array per edge and coefficient: gathers and arithmetic on flat arrays are several times
    # faster in numpy than on (N, 3) rows.
    a = [np.ascontiguousarray(coef[:, k, 0]) for k in range(3)]
    b = [np.ascontiguousarray(coef[:, k, 1]) for k in range(3)]
    c = [np.ascontiguousarray(coef[:, k, 2]) for k in range(3)]
    # Top-left rule, per edge: on the edge itself the pixel belongs to the side whose coefficients are
    # "positive" (a > 0, or a == 0 and b > 0); the triangle sharing the edge has them negated.
    positive = [(a[k] > 0) | ((a[k] == 0) & (b[k] > 0)) for k in range(3)]
    out = []
    ends = np.cumsum(counts)
    start_tri = 0
    while start_tri < len(counts):
        base = ends[start_tri - 1] if start_tri else 0
        stop_tri = max(int(np.searchsorted(ends, base + CHUNK, side="right")), start_tri + 1)
        n = counts[start_tri:stop_tri]
        local = np.repeat(np.arange(start_tri, stop_tri), n)
        offset = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        width_t = np.take(bw, local)
        row_off = offset // width_t
        col = np.take(boxes[:, 0], local) + (offset - row_off * width_t)
        row = np.take(boxes[:, 1], local) + row_off
        x, y = np.take(rx, col), np.take(ry, row)
        e = [np.take(a[k], local) * x + np.take(b[k], local) * y + np.take(c[k], local) for k in range(3)]
        total = e[0] + e[1] + e[2]
        front = total > 0
        se = [np.where(front, ek, -ek) for ek in e]
        inside = (se[0] > 0) & (se[1] > 0) & (se[2] > 0)
        tie = np.flatnonzero(~inside & (se[0] >= 0) & (se[1] >= 0) & (se[2] >= 0) & (total != 0))
        if len(tie):  # a centre exactly on an edge or corner: the top-left rule decides
            lt, ft = local[tie], front[tie]
            inside[tie] = np.logical_and.reduce([(se[k][tie] != 0) | (positive[k][lt] == ft) for k in range(3)])
        keep_idx = np.flatnonzero(inside)
        out.append(Fragments(np.take(row, keep_idx) * width + np.take(col, keep_idx),
                             np.take(ids, np.take(local, keep_idx)),
                             np.stack([np.take(ek, keep_idx) for ek in e], axis=1)))
        start_tri = stop_tri
    if not out:
        return Fragments(np.empty(0, np.int64), np.empty(0, np.int32), np.empty((0, 3)))
    return Fragments(np.concatenate([f.pixel for f in out]), np.concatenate([f.triangle for f in out]),
                     np.concatenate([f.weights for f in out]))


def boxes_from_points(x: np.ndarray, y: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel boxes (col0, row0, col1, row1) holding every pixel centre inside the triangles whose corners
    are at continuous image positions ``x``, ``y`` (T, 3), clipped to the image."""
    eps = 1e-6  # a centre exactly on a corner is tested, not lost to rounding between the two frames
    col0 = np.clip(np.ceil(x.min(axis=1) - 0.5 - eps), 0, width)
    col1 = np.clip(np.floor(x.max(axis=1) - 0.5 + eps) + 1, 0, width)
    row0 = np.clip(np.ceil(y.min(axis=1) - 0.5 - eps), 0, height)
    row1 = np.clip(np.floor(y.max(axis=1) - 0.5 + eps) + 1, 0, height)
    return np.stack([col0, row0, col1, row1], axis=1).astype(np.int64)
