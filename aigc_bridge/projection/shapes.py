"""Meshes with known geometry and UVs (a box, a UV sphere) for the geometry tests and the benchmarks."""

from __future__ import annotations

import numpy as np

from .mesh import Mesh

# Where each box face goes in a 3 x 2 grid of UV cells, with a gutter between the cells.
_BOX_FACES = (  # normal axis, sign, the two in-face axes (u, v) so that u x v = outward normal
    (0, 1, 1, 2), (0, -1, 2, 1), (1, 1, 2, 0), (1, -1, 0, 2), (2, 1, 0, 1), (2, -1, 1, 0),
)


def box(centre: object = (0.0, 0.0, 0.0), half: object = (1.0, 1.0, 1.0), *, subdivisions: int = 1,
        gutter: float = 0.02, name: str = "box") -> Mesh:
    """An axis-aligned box, outward wound, each face ``subdivisions`` x ``subdivisions`` quads (two
    triangles each) and its own UV island: six islands in a 3 x 2 grid."""
    centre, half = np.asarray(centre, np.float64), np.asarray(half, np.float64)
    n = subdivisions
    grid = np.linspace(-1.0, 1.0, n + 1)
    positions, triangles, uvs = [], [], []
    cell_w, cell_h = 1.0 / 3.0, 0.5
    for face, (axis, sign, ua, va) in enumerate(_BOX_FACES):
        s, t = np.meshgrid(grid, grid, indexing="xy")  # s along ua, t along va
        p = np.zeros((n + 1, n + 1, 3))
        p[..., axis] = sign
        p[..., ua], p[..., va] = s, t
        base = sum(len(q) for q in positions)
        positions.append((centre + half * p).reshape(-1, 3))
        col, row = face % 3, face // 3
        u = col * cell_w + gutter + (s + 1) / 2 * (cell_w - 2 * gutter)
        v = row * cell_h + gutter + (t + 1) / 2 * (cell_h - 2 * gutter)
        uv = np.stack([u, v], axis=-1)
        for j in range(n):
            for i in range(n):
                a, b, c, d = (j * (n + 1) + i, j * (n + 1) + i + 1, (j + 1) * (n + 1) + i + 1,
                              (j + 1) * (n + 1) + i)
                for tri in ((a, b, c), (a, c, d)):
                    triangles.append([base + k for k in tri])
                    uvs.append([uv.reshape(-1, 2)[k] for k in tri])
    return Mesh.checked(np.concatenate(positions), np.array(triangles), np.array(uvs), name)


def uv_sphere(centre: object = (0.0, 0.0, 0.0), radius: float = 1.0, *, segments: int = 32, rings: int = 16,
              name: str = "sphere") -> Mesh:
    """A UV sphere (Z up) with Blender's layout: u = longitude, v = latitude, a seam at longitude 0 where u
    jumps from 1 back to 0, triangle fans at the poles. 2 x segments x (rings - 1) triangles."""
    centre = np.asarray(centre, np.float64)
    lon = np.linspace(0.0, 2 * np.pi, segments + 1)
    lat = np.linspace(-np.pi / 2, np.pi / 2, rings + 1)
    # Vertices per (ring, segment) on the grid, the seam column duplicated so the UVs can jump.
    lo, la = np.meshgrid(lon, lat, indexing="xy")
    pos = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)
    pos = centre + radius * pos
    uv = np.stack([lo / (2 * np.pi), (la + np.pi / 2) / np.pi], axis=-1)
    # Weld the seam column and the pole rows so the surface is closed.
    index = np.arange((rings + 1) * (segments + 1)).reshape(rings + 1, segments + 1)
    index[:, -1] = index[:, 0]
    index[0, :] = index[0, 0]
    index[-1, :] = index[-1, 0]
    grid = np.arange((rings + 1) * (segments + 1)).reshape(rings + 1, segments + 1)  # unwelded, for UVs
    j, i = np.meshgrid(np.arange(rings), np.arange(segments), indexing="ij")
    a, b, c, d = grid[j, i], grid[j, i + 1], grid[j + 1, i + 1], grid[j + 1, i]
    lower = np.stack([a, b, c], axis=-1)[1:].reshape(-1, 3)       # no sliver at the south pole
    upper = np.stack([a, c, d], axis=-1)[:-1].reshape(-1, 3)      # nor at the north pole
    corners = np.concatenate([lower, upper])
    return Mesh.checked(pos.reshape(-1, 3), index.reshape(-1)[corners], uv.reshape(-1, 2)[corners], name)
