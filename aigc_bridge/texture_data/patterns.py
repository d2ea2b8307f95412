"""Structure maps of the procedural material families: float arrays in [0, 1], periodic on both axes.

Periodic by construction: every map is a function of u = x / w and v = y / h taken modulo 1 (integer
repeat counts, integer sinusoid frequencies, torus distances, Fourier-series noise), where w x h are the
pixels of one period. A ``Canvas`` may show several periods; the tests render two and check that the
result is exactly the one-period image tiled 2 x 2. Colour is applied later, so every family comes in
every colour and the model must learn pattern and colour as separate words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Rng = np.random.Generator

# Repeats across one period for each scale word (at 32 px, 6 repeats are cells of 5-6 px: finer detail
# does not survive a factor-2 VAE; calibration note).
_COUNTS = {"small": 6, "medium": 4, "large": 2}


@dataclass(frozen=True)
class Canvas:
    """``h`` x ``w`` pixels per period; the canvas shows ``periods`` = (rows, columns) periods."""

    h: int
    w: int
    periods: tuple[int, int] = (1, 1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.h * self.periods[0], self.w * self.periods[1]

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """v (rows) and u (columns), in periods: [0, 1) for the first period."""
        rows, cols = self.shape
        return np.meshgrid(np.arange(rows) / self.h, np.arange(cols) / self.w, indexing="ij")

    def transposed(self) -> Canvas:
        return Canvas(self.w, self.h, (self.periods[1], self.periods[0]))

    def tile(self, period: np.ndarray) -> np.ndarray:
        """Repeat a one-period array (h, w, ...) over the canvas."""
        return np.tile(period, (*self.periods, *([1] * (period.ndim - 2))))


def periodic_noise(rng: Rng, c: Canvas, beta: float = 2.0, stretch: tuple[float, float] = (1.0, 1.0)
                   ) -> np.ndarray:
    """Gaussian noise with a power-law spectrum (1/f^beta): a random Fourier series with integer
    frequencies, hence periodic. ``stretch`` (y, x) > 1 lengthens structures along that axis."""
    ky = np.fft.fftfreq(c.h) * c.h               # cycles per period
    kx = np.fft.fftfreq(c.w) * c.w
    f = np.sqrt((ky[:, None] * stretch[0]) ** 2 + (kx[None, :] * stretch[1]) ** 2)
    amp = np.where(f > 0, np.maximum(f, 1.0) ** (-beta / 2.0), 0.0)
    spectrum = amp * (rng.standard_normal((c.h, c.w)) + 1j * rng.standard_normal((c.h, c.w)))
    rows, cols = c.shape
    ey = np.exp(2j * np.pi * np.outer(np.arange(rows) / c.h, ky))
    ex = np.exp(2j * np.pi * np.outer(np.arange(cols) / c.w, kx))
    field = (ey @ spectrum @ ex.T).real          # the inverse DFT, evaluated on the canvas
    period = field[: c.h, : c.w]
    return (field - period.mean()) / (period.std() + 1e-8)


def _cell(rng: Rng, count: int | tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, size=count)


def _index(x: np.ndarray, n: int) -> np.ndarray:
    """Which of ``n`` cells per period a coordinate falls in (wrapping)."""
    return np.floor(x * n).astype(int) % n


def _line(frac: np.ndarray, width: float) -> np.ndarray:
    """True inside a line of relative ``width`` at the cell border (frac near 0)."""
    return frac < width


def bricks(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    rows = max(2, n - n % 2)                      # even, so the half-brick offset wraps
    per_row = max(1, rows // 2)
    v, u = c.coords()
    row = _index(v, rows)
    shifted = u * per_row + 0.5 * (row % 2)
    shade = _cell(rng, (rows, per_row), 0.6, 1.0)[row, _index(shifted / per_row, per_row)]
    mortar = _line(np.mod(v * rows, 1.0), rows / c.h) | _line(np.mod(shifted, 1.0), per_row / c.w)
    return np.where(mortar, 0.12, shade)          # one pixel of mortar at any size


def tiles(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    v, u = c.coords()
    fv, fu = np.mod(v * n, 1.0), np.mod(u * n, 1.0)
    cell = _cell(rng, (n, n), 0.8, 1.0)[_index(v, n), _index(u, n)]
    bevel = 0.12 * (1.0 - fu - fv) / 2.0          # lit from the top left
    grout = _line(fv, n / c.h) | _line(fu, n / c.w)
    return np.where(grout, 0.25, np.clip(cell + bevel - 0.06, 0, 1))


def checker(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    n = max(2, n - n % 2)                         # an even count wraps
    v, u = c.coords()
    parity = (_index(v, n) + _index(u, n)) % 2
    dark, light = rng.uniform(0.0, 0.2), rng.uniform(0.85, 1.0)
    return np.where(parity > 0, light, dark)


def stripes(rng: Rng, c: Canvas, n: int, orientation: str) -> np.ndarray:
    v, u = c.coords()
    phase = {"horizontal": v * n, "vertical": u * n,
             "diagonal": (u + v) * n if rng.random() < 0.5 else (u - v) * n}[orientation]
    duty = rng.uniform(0.35, 0.6)
    frac = np.mod(phase + rng.random(), 1.0)
    dark, light = rng.uniform(0.0, 0.25), rng.uniform(0.85, 1.0)
    return np.where(frac < duty, light, dark)


def planks(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    """Wooden planks with grain along them and one butt joint each; random orientation."""
    n = max(2, n)
    vertical = rng.random() < 0.5
    cc = c.transposed() if vertical else c        # build horizontal planks, transpose if vertical
    v, u = cc.coords()
    plank = _index(v, n)
    warp = periodic_noise(rng, cc, beta=3.0, stretch=(1.0, 4.0))
    grain_freq = int(rng.integers(3, 6)) * n
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (v * grain_freq + 0.35 * warp))
    shade = _cell(rng, n, 0.65, 1.0)[plank]
    joint_at = rng.random(n)[plank]
    joint = np.abs(np.mod(u - joint_at + 0.5, 1.0) - 0.5) < 0.5 / cc.w
    seam = _line(np.mod(v * n, 1.0), n / cc.h)
    m = np.where(seam | joint, 0.1, shade * (0.7 + 0.3 * grain))
    return m.T if vertical else m


def _torus_distances(points: np.ndarray, c: Canvas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest and second-nearest distance (pixels) to ``points`` (K, 2) in [0, 1)^2 on the torus, and
    the index of the nearest point."""
    v, u = c.coords()
    dv = np.mod(v[None] - points[:, 0, None, None] + 0.5, 1.0) - 0.5
    du = np.mod(u[None] - points[:, 1, None, None] + 0.5, 1.0) - 0.5
    d = np.sqrt((dv * c.h) ** 2 + (du * c.w) ** 2)
    order = np.argsort(d, axis=0, kind="stable")
    nearest = np.take_along_axis(d, order[:1], 0)[0]
    second = np.take_along_axis(d, order[1:2], 0)[0]
    return nearest, second, order[0]


def hexagons(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    rows = max(2, n - n % 2)                      # even, so the offset rows wrap
    cols = max(2, n)
    r, k = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    points = np.stack([(r + 0.5) / rows, (k + 0.5 + 0.5 * (r % 2)) / cols], axis=-1).reshape(-1, 2)
    d1, d2, idx = _torus_distances(np.mod(points, 1.0), c)
    shade = _cell(rng, len(points), 0.7, 1.0)[idx]
    return np.where((d2 - d1) < 1.6, 0.15, shade)


def dots(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    v, u = c.coords()
    offset = rng.random() < 0.5 and n % 2 == 0
    row = _index(v, n)
    fu = np.mod(u * n + (0.5 * (row % 2) if offset else 0.0), 1.0) - 0.5
    fv = np.mod(v * n, 1.0) - 0.5
    radius = rng.uniform(0.22, 0.38)
    dot, ground = (0.95, 0.2) if rng.random() < 0.5 else (0.1, 0.9)
    return np.where(np.sqrt(fu * fu + fv * fv) < radius, dot, ground)


def marble(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    v, u = c.coords()
    turbulence = periodic_noise(rng, c, beta=2.5)
    ku, kv = int(rng.integers(1, 3)), int(rng.integers(0, 3))
    t = (u * ku + v * kv) * max(1, n // 2) + 0.6 * turbulence
    veins = np.abs(np.sin(np.pi * t)) ** 0.35     # dips to 0 on thin, wandering lines
    cloud = periodic_noise(rng, c, beta=3.0)
    return np.clip(0.1 + 0.85 * veins + 0.06 * cloud, 0, 1)


def grass(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    blades = periodic_noise(rng, c, beta=1.2, stretch=(2.5 + n / 4.0, 0.5 + 2.0 / n))
    ground = periodic_noise(rng, c, beta=3.0)
    return np.clip(0.55 + 0.22 * blades + 0.08 * ground, 0, 1)


def gravel(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    count = {6: 36, 4: 18, 2: 8}.get(n, 4 * n)
    points = rng.random((count, 2))
    d1, d2, idx = _torus_distances(points, c)
    size = np.sqrt(c.h * c.w / count) / 2.0
    shade = _cell(rng, count, 0.45, 1.0)[idx]
    rounded = 1.0 - 0.45 * np.clip(d1 / size, 0, 1.5) ** 2
    return np.clip(np.where((d2 - d1) < 1.2, 0.08, shade * rounded), 0, 1)


def weave(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    """Plain or basket weave: warp and weft threads alternating over and under."""
    threads = {6: 8, 4: 6, 2: 4}.get(n, 2 * n)    # even, so the over/under parity wraps
    v, u = c.coords()
    i, j = _index(v, threads), _index(u, threads)
    fv, fu = np.mod(v * threads, 1.0), np.mod(u * threads, 1.0)
    group = 2 if rng.random() < 0.3 and threads % 4 == 0 else 1
    warp_on_top = ((i // group + j // group) % 2) == 0
    across = np.where(warp_on_top, np.sin(np.pi * fu), np.sin(np.pi * fv))
    return 0.2 + 0.8 * across ** 0.7


def zigzag(rng: Rng, c: Canvas, n: int) -> np.ndarray:
    v, u = c.coords()
    teeth = int(rng.integers(1, 3)) * max(2, n)
    tri = np.abs(np.mod(u * teeth, 1.0) - 0.5) * 2.0   # triangle wave 0..1, period 1/teeth
    amplitude = rng.uniform(0.6, 1.2) * n / teeth
    dark, light = rng.uniform(0.0, 0.25), rng.uniform(0.85, 1.0)
    return np.where(np.mod(v * n + amplitude * tri, 1.0) < 0.5, light, dark)


# family name -> maker(rng, canvas, repeats); stripes also take an orientation (see ``structure``)
FAMILIES: dict[str, Callable[..., np.ndarray]] = {
    "bricks": bricks, "tiles": tiles, "checker": checker, "stripes": stripes, "planks": planks,
    "hexagons": hexagons, "dots": dots, "marble": marble, "grass": grass, "gravel": gravel,
    "weave": weave, "zigzag": zigzag,
}
ORIENTATIONS = ("horizontal", "vertical", "diagonal")


def structure(rng: Rng, family: str, c: Canvas, scale: str, orientation: str | None = None) -> np.ndarray:
    """The family's structure map at a scale word ("small", "medium", "large")."""
    n = _COUNTS[scale]
    if family == "stripes":
        return stripes(rng, c, n, orientation or "vertical")
    return FAMILIES[family](rng, c, n)
