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

Work is proportional to the pixels covered: along each row of a triangle the edge functions are linear,
so the span of columns inside is solved for per (triangle, row) and only those pixels are generated (with
``np.repeat``, no Python loop over triangles) and tested exactly, in chunks of bounded memory. Triangles
crossing a pinhole camera's eye plane (their inside changes sign across the image) are tested pixel by
pixel over their bounding box instead.
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


def edge_coefficients(corners: np.ndarray, *, pinhole: bool, ids: np.ndarray | None = None) -> np.ndarray:
    """(T, 3, 3): for corner k, the coefficients (a, b, c) of the edge function opposite it.

    ``corners`` (T, 3, 3) are camera-space points (pinhole) or (T, 3, 2) plane points (orthographic, UV).
    Each edge is computed from its two corners in a canonical order: by ``ids`` (T, 3) when given (vertex
    ids that are equal exactly when the points are, e.g. welded by position), else lexicographically by
    coordinates. Bit-identical corners, a shared edge, then give bit-identical, negated coefficients."""
    coef = np.empty((len(corners), 3, 3), np.float64)
    for k in range(3):
        i, j = (k + 1) % 3, (k + 2) % 3
        p, q = corners[:, i], corners[:, j]
        if ids is not None:
            swap = ids[:, i] > ids[:, j]
        else:
            swap = np.zeros(len(corners), bool)
            decided = np.zeros(len(corners), bool)
            for axis in range(corners.shape[2]):
                swap |= ~decided & (p[:, axis] > q[:, axis])
                decided |= p[:, axis] != q[:, axis]
        p, q = np.where(swap[:, None], q, p), np.where(swap[:, None], p, q)
        sign = np.where(swap, -1.0, 1.0)
        if pinhole:  # e = ray . (p x q), ray = (rx, ry, -1)
            coef[:, k, 0] = sign * (p[:, 1] * q[:, 2] - p[:, 2] * q[:, 1])
            coef[:, k, 1] = sign * (p[:, 2] * q[:, 0] - p[:, 0] * q[:, 2])
            coef[:, k, 2] = -sign * (p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0])
        else:  # e = (q - p) x (r - p), z component, expanded in r
            coef[:, k, 0] = sign * (p[:, 1] - q[:, 1])
            coef[:, k, 1] = sign * (q[:, 0] - p[:, 0])
            coef[:, k, 2] = sign * (p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0])
    return coef


def rasterize(coef: np.ndarray, boxes: np.ndarray, rx: np.ndarray, ry: np.ndarray,
              triangles: np.ndarray | None = None, orientation: np.ndarray | None = None) -> Fragments:
    """Every (pixel, triangle) pair whose pixel centre is inside the triangle.

    ``coef`` (T, 3, 3) from ``edge_coefficients``; ``boxes`` (T, 4) int: col0, row0, col1, row1 (exclusive)
    already clipped to the image; ``rx`` (W,) and ``ry`` (H,) the plane coordinates of column and row
    centres, ``rx`` increasing evenly; ``triangles`` (T,) the ids to report (default 0..T-1);
    ``orientation`` (T,) +1 / -1, the sign of the edge functions inside each triangle where it is the same
    over the whole image (2D, or a triangle wholly in front of a pinhole camera), 0 where it is not (a
    triangle crossing the eye plane): those are tested pixel by pixel over their box. The returned
    weights are the edge functions as ``coef`` gives them (their sum is negative for negative orientation).
    """
    ids = np.arange(len(coef), dtype=np.int32) if triangles is None else triangles.astype(np.int32)
    if orientation is None:
        orientation = np.zeros(len(coef))
    known = orientation != 0
    parts = []
    if known.any():
        sel = np.flatnonzero(known)
        parts += _spans(coef[sel], boxes[sel], rx, ry, ids[sel], orientation[sel])
    if not known.all():
        sel = np.flatnonzero(~known)
        parts += _boxes(coef[sel], boxes[sel], rx, ry, ids[sel])
    if not parts:
        return Fragments(np.empty(0, np.int64), np.empty(0, np.int32), np.empty((0, 3)))
    return Fragments(np.concatenate([f.pixel for f in parts]), np.concatenate([f.triangle for f in parts]),
                     np.concatenate([f.weights for f in parts]))


SPAN_SLACK = 1e-6  # columns: a span reaches this far past its computed ends, so rounding there loses nothing


def _spans(coef: np.ndarray, boxes: np.ndarray, rx: np.ndarray, ry: np.ndarray, ids: np.ndarray,
           sign: np.ndarray) -> list[Fragments]:
    """Triangles of known orientation, row by row: per (triangle, row) the column span where all three edge
    functions are >= 0 is solved for (they are linear along a row), and only the span's pixels are tested
    exactly, so the work is the covered pixels, not the bounding boxes."""
    width = len(rx)
    # Fold the orientation in: inside is then e > 0 for every triangle (negation is exact, so shared edges
    # still evaluate to exactly opposite values).
    a = [sign * coef[:, k, 0] for k in range(3)]
    b = [sign * coef[:, k, 1] for k in range(3)]
    c = [sign * coef[:, k, 2] for k in range(3)]
    owns = [(a[k] > 0) | ((a[k] == 0) & (b[k] > 0)) for k in range(3)]  # the top-left rule
    rows = np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    pair_tri = np.repeat(np.arange(len(coef)), rows)
    pair_row = np.take(boxes[:, 1], pair_tri) + (np.arange(len(pair_tri)) - np.repeat(np.cumsum(rows) - rows, rows))
    y = np.take(ry, pair_row)
    rx0, step = float(rx[0]), float(rx[1] - rx[0]) if width > 1 else 1.0
    lo = np.take(boxes[:, 0], pair_tri).astype(np.float64)
    hi = np.take(boxes[:, 2], pair_tri).astype(np.float64) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            ak = np.take(a[k], pair_tri)
            at_col0 = ak * rx0 + np.take(b[k], pair_tri) * y + np.take(c[k], pair_tri)  # e_k at column 0
            slope = ak * step
            bound = -at_col0 / slope  # the column where e_k crosses 0
            lo = np.where(slope > 0, np.maximum(lo, bound), lo)
            hi = np.where(slope < 0, np.minimum(hi, bound), hi)
            hi = np.where((slope == 0) & (at_col0 < 0), -1.0, hi)  # parallel to the row and outside
    start = np.ceil(np.clip(lo, -1.0, width) - SPAN_SLACK).astype(np.int64)
    stop = np.floor(np.clip(hi, -1.0, width) + SPAN_SLACK).astype(np.int64)
    count = np.maximum(stop - start + 1, 0)

    out = []
    for pair, offset in _batches(count):
        col = np.take(start, pair) + offset
        row, tri = np.take(pair_row, pair), np.take(pair_tri, pair)
        x, yy = np.take(rx, col), np.take(ry, row)
        e = [np.take(a[k], tri) * x + np.take(b[k], tri) * yy + np.take(c[k], tri) for k in range(3)]
        inside = (e[0] > 0) & (e[1] > 0) & (e[2] > 0)
        tie = np.flatnonzero(~inside & (e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0))
        if len(tie):  # a centre exactly on an edge or corner
            inside[tie] = np.logical_and.reduce([(e[k][tie] != 0) | owns[k][tri[tie]] for k in range(3)])
        keep = np.flatnonzero(inside)
        tri_kept = np.take(tri, keep)
        unfold = np.take(sign, tri_kept)[:, None]
        out.append(Fragments(np.take(row, keep) * width + np.take(col, keep), np.take(ids, tri_kept),
                             np.stack([np.take(ek, keep) for ek in e], axis=1) * unfold))
    return out


def _boxes(coef: np.ndarray, boxes: np.ndarray, rx: np.ndarray, ry: np.ndarray, ids: np.ndarray) -> list[Fragments]:
    """Triangles whose orientation varies over the image: every pixel of the box, with its own sign."""
    width = len(rx)
    bw = np.maximum(boxes[:, 2] - boxes[:, 0], 0).astype(np.int64)
    bh = np.maximum(boxes[:, 3] - boxes[:, 1], 0).astype(np.int64)
    counts = bw * bh
    a = [np.ascontiguousarray(coef[:, k, 0]) for k in range(3)]
    b = [np.ascontiguousarray(coef[:, k, 1]) for k in range(3)]
    c = [np.ascontiguousarray(coef[:, k, 2]) for k in range(3)]
    positive = [(a[k] > 0) | ((a[k] == 0) & (b[k] > 0)) for k in range(3)]
    out = []
    for local, offset in _batches(counts):
        width_t = np.take(bw, local)
        row_off = offset // np.maximum(width_t, 1)
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
    return out


def _batches(counts: np.ndarray):
    """Items 0..n-1 each repeated ``counts[i]`` times, in batches of about CHUNK: (item, k) pairs, k running
    0..counts[i]-1 within each item, so memory stays bounded however large the image."""
    ends = np.cumsum(counts)
    first = 0
    while first < len(counts):
        base = ends[first - 1] if first else 0
        last = max(int(np.searchsorted(ends, base + CHUNK, side="right")), first + 1)
        n = counts[first:last]
        yield np.repeat(np.arange(first, last), n), np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        first = last


def boxes_from_points(x: np.ndarray, y: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel boxes (col0, row0, col1, row1) holding every pixel centre inside the triangles whose corners
    are at continuous image positions ``x``, ``y`` (T, 3), clipped to the image."""
    eps = 1e-6  # a centre exactly on a corner is tested, not lost to rounding between the two frames
    col0 = np.clip(np.ceil(x.min(axis=1) - 0.5 - eps), 0, width)
    col1 = np.clip(np.floor(x.max(axis=1) - 0.5 + eps) + 1, 0, width)
    row0 = np.clip(np.ceil(y.min(axis=1) - 0.5 - eps), 0, height)
    row1 = np.clip(np.floor(y.max(axis=1) - 0.5 + eps) + 1, 0, height)
    return np.stack([col0, row0, col1, row1], axis=1).astype(np.int64)
