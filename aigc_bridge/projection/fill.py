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


def fill_unseen(mesh: Mesh, texels: TexelMap, colours: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``colours`` (N, C) with every texel where ``seen`` is False filled from the surface around it."""
    if seen.all():
        return colours
    out = colours.copy()
    channels = colours.shape[1]
    _, vertex = np.unique(mesh.positions, axis=0, return_inverse=True)
    vertex = vertex.reshape(-1)
    corners = vertex[mesh.triangles]  # (T, 3) welded vertex ids
    n_vertices = int(vertex.max()) + 1

    # Vertex colours from the seen texels of the faces around each vertex.
    tri = texels.triangle[seen]
    counts = np.bincount(tri, minlength=len(corners)).astype(np.float64)
    sums = np.stack([np.bincount(tri, colours[seen, c], minlength=len(corners)) for c in range(channels)], 1)
    v_sum = np.zeros((n_vertices, channels))
    v_cnt = np.zeros(n_vertices)
    for k in range(3):
        np.add.at(v_sum, corners[:, k], sums)
        np.add.at(v_cnt, corners[:, k], counts)
    known = v_cnt > 0
    v_col = np.zeros((n_vertices, channels))
    v_col[known] = v_sum[known] / v_cnt[known, None]

    # Spread ring by ring: an unknown vertex next to known ones takes their mean.
    edges = np.concatenate([corners[:, [0, 1]], corners[:, [1, 2]], corners[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])  # both directions
    while not known.all():
        frontier = known[edges[:, 0]] & ~known[edges[:, 1]]
        if not frontier.any():
            break
        src, dst = edges[frontier, 0], edges[frontier, 1]
        add = np.zeros((n_vertices, channels))
        cnt = np.bincount(dst, minlength=n_vertices).astype(np.float64)
        for c in range(channels):
            add[:, c] = np.bincount(dst, v_col[src, c], minlength=n_vertices)
        new = cnt > 0
        v_col[new] = add[new] / cnt[new, None]
        known |= new
    if not known.all():  # parts no view saw anything of
        v_col[~known] = v_col[known].mean(axis=0) if known.any() else NEUTRAL

    unseen = ~seen
    tri = texels.triangle[unseen]
    out[unseen] = np.einsum("nk,nkc->nc", texels.bary[unseen], v_col[corners[tri]])
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
