"""What no view saw, and what no triangle covers: filling unseen texels and padding the UV islands.

Unseen texels are filled on the surface, not in the UV map: colours spread over the mesh's vertex graph
(vertices welded by position, so the fill agrees across UV seams) from the vertices whose faces were
seen, one ring per step, and an unseen texel takes its triangle's vertex colours interpolated. A hole
that crosses a seam is filled the same on both sides, which UV-space dilation within islands cannot do.

The gutter between islands is then padded: a margin of texel rings around every island continues its
border colours outwards (so bilinear filtering at a seam sees the island's own colour), and push-pull (a
pyramid of averages of what is filled, pushed back down into the empty texels) fills the rest, so every
texel of the texture holds a colour from a nearby island and no mip level averages in a background colour.
"""

from __future__ import annotations

import numpy as np

from .mesh import Mesh
from .texels import TexelMap

NEUTRAL = 0.5  # the colour of a mesh part that no view saw at all


def vertex_colours(mesh: Mesh, texels: TexelMap, colours: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """(V', C) a colour per welded vertex (``mesh.welded`` ids): the mean of the seen texels of the faces
    around it, or, where none was seen, spread from the nearest seen vertices one ring at a time."""
    channels = colours.shape[1]
    corners = mesh.welded
    n_vertices = int(corners.max()) + 1
    tri = texels.triangle[seen]
    counts = np.bincount(tri, minlength=len(corners)).astype(np.float64)
    sums = [np.bincount(tri, colours[seen, c], minlength=len(corners)) for c in range(channels)]
    flat = corners.T.reshape(-1)  # corner k of every triangle, k = 0, 1, 2
    v_cnt = np.bincount(flat, np.tile(counts, 3), minlength=n_vertices)
    v_col = np.stack([np.bincount(flat, np.tile(sc, 3), minlength=n_vertices) for sc in sums], axis=1)
    known = v_cnt > 0
    v_col[known] /= v_cnt[known, None]

    indptr, neighbours = mesh.vertex_graph
    frontier = np.flatnonzero(known)
    while len(frontier) and not known.all():  # each ring reads only the edges out of the last one
        degree = indptr[frontier + 1] - indptr[frontier]
        src = np.repeat(frontier, degree)
        dst = neighbours[np.repeat(indptr[frontier] - np.cumsum(degree) + degree, degree) + np.arange(degree.sum())]
        fresh = ~known[dst]
        src, dst = src[fresh], dst[fresh]
        if len(dst) == 0:
            break
        count = np.bincount(dst, minlength=n_vertices)
        frontier = np.flatnonzero(count)
        for c in range(channels):
            v_col[frontier, c] = np.bincount(dst, v_col[src, c], minlength=n_vertices)[frontier] / count[frontier]
        known[frontier] = True
    if not known.all():  # parts no view saw anything of
        v_col[~known] = v_col[known].mean(axis=0) if known.any() else NEUTRAL
    return v_col


def fill_unseen(mesh: Mesh, texels: TexelMap, colours: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``colours`` (N, C) with every texel where ``seen`` is False filled from the surface around it."""
    if seen.all():
        return colours
    v_col = vertex_colours(mesh, texels, colours, seen)
    out = colours.copy()
    unseen = np.flatnonzero(~seen)
    corner = np.take(mesh.welded, texels.triangle[unseen], axis=0)
    bary = texels.bary[unseen]
    out[unseen] = sum(bary[:, k, None] * np.take(v_col, corner[:, k], axis=0) for k in range(3))
    return out


def pad(texels: TexelMap, colours: np.ndarray, margin: int | None = None) -> np.ndarray:
    """The full (S, S, C) texture: covered texels keep ``colours`` (N, C); ``margin`` rings of texels around
    the islands (default S / 128, Blender's 16 px bake margin at 2K) extend each island's border colours
    outwards, and every texel beyond takes the push-pull average of the texels nearest to it."""
    size = texels.size
    channels = colours.shape[1]
    margin = max(2, size // 128) if margin is None else margin
    value = texels.image(colours.astype(np.float64), 0.0).reshape(size * size, channels)
    filled = texels.mask().reshape(-1)
    row, col = np.divmod(np.arange(size * size), size)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for _ in range(margin):  # dilation, one ring at a time, only where the ring is
        grid = filled.reshape(size, size)
        near = np.zeros((size, size), bool)
        for dy, dx in offsets:
            near |= np.roll(grid, (dy, dx), axis=(0, 1))  # wraps, as the texture repeats
        ring = np.flatnonzero(near.reshape(-1) & ~filled)
        if len(ring) == 0:
            break
        total = np.zeros((len(ring), channels))
        count = np.zeros(len(ring))
        r, c = row[ring], col[ring]
        for dy, dx in offsets:
            other = ((r - dy) % size) * size + (c - dx) % size
            ok = filled[other]
            total[ok] += value[other[ok]]
            count += ok
        value[ring] = total / count[:, None]
        filled[ring] = True

    weight = filled.reshape(size, size).astype(np.float64)
    sums, weights = [value.reshape(size, size, channels) * weight[..., None]], [weight]
    while sums[-1].shape[0] > 1:  # pull: 2 x 2 sums up to 1 x 1 (sizes are powers of two)
        s, w = sums[-1], weights[-1]
        half = s.shape[0] // 2
        sums.append(s.reshape(half, 2, half, 2, channels).sum(axis=(1, 3)))
        weights.append(w.reshape(half, 2, half, 2).sum(axis=(1, 3)))
    result = _mean(sums[-1], weights[-1], np.full((1, 1, channels), NEUTRAL))
    for s, w in zip(reversed(sums[:-1]), reversed(weights[:-1])):  # push: empty texels take the parent
        parent = np.repeat(np.repeat(result, 2, axis=0), 2, axis=1)
        result = _mean(s, w, parent)
    out = result.reshape(size * size, channels)
    out[filled] = value[filled]  # covered texels exactly as baked, the margin as dilated
    return out.reshape(size, size, channels).astype(np.float32)


def _mean(sums: np.ndarray, weights: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    w = weights[..., None]
    return np.where(w > 0, sums / np.maximum(w, 1e-30), fallback)
