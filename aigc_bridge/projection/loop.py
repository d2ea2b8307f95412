"""The multi-view texturing loop (after TEXTure, Richardson et al. 2023), against a generator passed in.

View 1 is generated from its depth image alone. Every later view is conditioned on its depth image and on
what earlier views already put on the surface: the textured meshes are rendered into it as the init
image, the pixels whose texels were seen well are kept, and only those seen badly or not at all
(the seen-quality record against this view's own trust, see bake.py) are masked for the generator to
repaint; baking then replaces exactly those texels. Neighbouring views therefore agree where they overlap.
After the last view, unseen texels are filled on the surface and the UV islands padded (fill.py).

The generator is any callable with the keyword arguments of ``Generator``: the sidecar passes the engine
(image to image, inpainting, a depth ControlNet when the model has one), the geometry tests a synthetic
image source. Run state is explicit: ``LoopState`` reports progress per view to ``on_progress`` and is
where a caller (the callback itself, or another thread) cancels; the loop stops between views and raises
``Cancelled``, returning nothing half-made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import AigcError, Cancelled, InvalidRequest
from .bake import TextureState, bake_view, sample_view
from .cameras import Camera, check_outside, checked_camera
from .fill import fill_unseen, pad, vertex_colours
from .mesh import Mesh
from .texels import TexelMap, check_texture_size, texel_map
from .views import View, depth_image, edge_ramp, render_view


class Generator(Protocol):
    """Makes one view's image: ``depth`` (H, W) float32 0..1 (near = bright, background 0); ``init``
    (H, W, 3) float32 0..1 or None (then: generate from text and depth alone); ``mask`` (H, W) float32,
    1 = repaint, 0 = keep ``init`` there, or None with ``init`` None; ``strength`` 0..1 as in image to image;
    ``size`` (width, height). Returns (H, W, 3) float 0..1 or uint8."""

    def __call__(self, *, prompt: str, depth: np.ndarray, init: np.ndarray | None, mask: np.ndarray | None,
                 strength: float, seed: int, size: tuple[int, int]) -> np.ndarray: ...


@dataclass(frozen=True)
class LoopOptions:
    """``strength``: how strongly later views repaint their masked part (1 = from noise). ``repaint_below``:
    a texel seen before is repainted when this view sees it more than 1 / repaint_below times better.
    ``mask_grow_px``: the mask reaches this far into kept pixels so the generator can blend the boundary
    (baking still keeps those texels). View k (from 0) uses seed + k."""

    prompt: str
    seed: int = 0
    texture_size: int = 1024
    strength: float = 1.0
    repaint_below: float = 0.7
    mask_grow_px: int = 4
    background: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequest("prompt must be a non-empty text", "prompt")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**53 - 64:
            raise InvalidRequest(f"seed must be an integer from 0 to 2**53 - 65, got {self.seed!r}", "seed")
        check_texture_size(self.texture_size)
        for name in ("strength", "repaint_below"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise InvalidRequest(f"{name} must be a number in (0, 1], got {value!r}", name)
        if isinstance(self.mask_grow_px, bool) or not isinstance(self.mask_grow_px, int) or \
                not 0 <= self.mask_grow_px <= 64:
            raise InvalidRequest(f"mask_grow_px must be an integer from 0 to 64, got {self.mask_grow_px!r}",
                                 "mask_grow_px")
        if len(self.background) != 3 or not all(0.0 <= float(c) <= 1.0 for c in self.background):
            raise InvalidRequest("background must be three numbers from 0 to 1", "background")


@dataclass
class ViewReport:
    index: int
    name: str
    generated: bool          # False when the view had nothing to repaint (the generator was not called)
    repainted: int           # texels that took this view's colour, all meshes together
    coverage: float          # share of the surface seen so far, all meshes together
    generate_s: float = 0.0
    bake_s: float = 0.0


@dataclass
class LoopState:
    """Where a run is. ``cancel()`` may be called from ``on_progress`` or from another thread."""

    total: int
    done: int = 0
    stage: str = "starting"   # "rendering" | "generating" | "baking" | "filling" | "done"
    view_name: str = ""
    coverage: float = 0.0
    views: list[ViewReport] = field(default_factory=list)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def fraction(self) -> float:
        return self.done / max(self.total, 1)


@dataclass
class LoopResult:
    textures: list[np.ndarray]   # per mesh, (S, S, 3) float32 0..1, top row first, padded
    quality: list[np.ndarray]    # per mesh, (S, S) float32: the seen-quality record, 0 = never seen (filled)
    coverage: list[float]        # per mesh: the share of its surface some view saw
    views: list[ViewReport]
    warnings: list[str]


@dataclass
class Projection:
    """Meshes, cameras and one texture per mesh, checked together: the state a bake works on."""

    meshes: list[Mesh]
    cameras: list[Camera]
    texels: list[TexelMap]
    states: list[TextureState]
    warnings: list[str]

    @classmethod
    def prepare(cls, meshes: Sequence[Mesh], cameras: Sequence[Camera], texture_size: int) -> Projection:
        if not meshes:
            raise InvalidRequest("no meshes to texture", "meshes")
        if not cameras:
            raise InvalidRequest("no cameras: give some, or use ring_cameras", "cameras")
        cameras = [checked_camera(c, i) for i, c in enumerate(cameras)]
        check_outside(cameras, list(meshes))
        texels = [texel_map(m, texture_size) for m in meshes]
        warnings = [w for m in meshes for w in m.warnings] + [w for t in texels for w in t.warnings]
        return cls(list(meshes), cameras, texels, [TextureState.empty(t) for t in texels], warnings)

    def coverage(self) -> float:
        seen = sum(float(t.area[s.seen].sum()) for t, s in zip(self.texels, self.states))
        return seen / sum(t.surface_area for t in self.texels)

    def textures(self, background: object = 0.5) -> list[np.ndarray]:
        """The textures as baked so far, unseen texels filled and islands padded."""
        return [pad(t, fill_unseen(m, t, s.colours(), s.seen)) if s.seen.any()
                else np.full((t.size, t.size, s.colour_sum.shape[1]), background, np.float32)
                for m, t, s in zip(self.meshes, self.texels, self.states)]

    def rendered_quality(self, view: View) -> np.ndarray:
        """(H, W) how well the surface each pixel shows has been seen: the best quality among the (up to
        four) covered texels its bilinear footprint reads, so island borders do not read the empty gutter."""
        out = np.zeros(view.mesh.shape)
        for index, (t, s) in enumerate(zip(self.texels, self.states)):
            sel = view.mesh == index
            quality = t.image(s.quality, -1.0).reshape(-1)
            out[sel] = np.max([np.take(quality, texel) for texel, _ in _footprint(view.uv[sel], t.size)], axis=0)
        return out

    def render(self, view: View, background: object = 0.5) -> np.ndarray:
        """(H, W, 3) float32: what has been baked so far, as the view sees it. A pixel shows the bilinear
        mean of the seen texels it reads; where it reads none, the colour filled in on the surface around it
        (fill.vertex_colours, interpolated at the pixel's point): the init image of the next view."""
        out = np.empty((*view.mesh.shape, 3), np.float32)
        out[...] = np.asarray(background, np.float32)
        for index, (mesh, t, s) in enumerate(zip(self.meshes, self.texels, self.states)):
            sel = np.flatnonzero(view.mesh.reshape(-1) == index)
            if len(sel) == 0:
                continue
            seen = s.seen
            colours = s.colours()
            flat = t.image(colours, 0.0).reshape(t.size * t.size, -1)
            seen_img = t.image(seen.astype(np.float64), 0.0).reshape(-1)
            total = np.zeros(len(sel))
            acc = np.zeros((len(sel), colours.shape[1]))
            for texel, weight in _footprint(view.uv.reshape(-1, 2)[sel], t.size):
                wgt = weight * np.take(seen_img, texel)
                acc += wgt[:, None] * np.take(flat, texel, axis=0)
                total += wgt
            rendered = acc / np.maximum(total, 1e-12)[:, None]
            hole = total <= 1e-9
            if hole.any():
                v_col = vertex_colours(mesh, t, colours, seen) if seen.any() else np.full(
                    (int(mesh.welded.max()) + 1, colours.shape[1]), np.asarray(background, np.float64))
                tri = view.triangle.reshape(-1)[sel[hole]]
                bary = view.bary.reshape(-1, 3)[sel[hole]]
                corner = np.take(mesh.welded, tri, axis=0)
                rendered[hole] = sum(bary[:, k, None] * np.take(v_col, corner[:, k], axis=0) for k in range(3))
            out.reshape(-1, 3)[sel] = rendered
        return out


def _footprint(uv: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The four texels (flat indices, wrapping) a bilinear read at ``uv`` (N, 2) touches, with weights."""
    x = uv[:, 0] * size - 0.5
    y = (1.0 - uv[:, 1]) * size - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    tx, ty = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    return [(((y0 + dy) % size) * size + (x0 + dx) % size, (tx if dx else 1 - tx) * (ty if dy else 1 - ty))
            for dy in (0, 1) for dx in (0, 1)]


def texture_meshes(meshes: Sequence[Mesh], cameras: Sequence[Camera], generate: Generator,
                   options: LoopOptions, *, on_progress: Callable[[LoopState], None] | None = None,
                   state: LoopState | None = None) -> LoopResult:
    """Run the loop over ``cameras`` in order (ring_cameras orders them to overlap from the front out)."""
    projection = Projection.prepare(meshes, cameras, options.texture_size)
    state = state or LoopState(total=len(projection.cameras))
    state.total = len(projection.cameras)

    def report(stage: str) -> None:
        state.stage = stage
        if on_progress is not None:
            on_progress(state)
        if state.cancelled:
            raise Cancelled(f"cancelled after {state.done} of {state.total} views; nothing was applied")

    for index, camera in enumerate(projection.cameras):
        state.view_name = camera.name or f"view {index + 1}"
        report("rendering")
        view = render_view(projection.meshes, camera)
        ramp = edge_ramp(view)
        request = _view_request(projection, view, ramp, options, index)
        generated = request is not None
        generate_s = 0.0
        if generated:
            report("generating")
            started = time.perf_counter()
            image = _checked_image(generate(**request), camera, index)
            generate_s = time.perf_counter() - started
            report("baking")
        started = time.perf_counter()
        repainted = 0
        if generated:
            for m, (texels, tex_state) in enumerate(zip(projection.texels, projection.states)):
                sample = sample_view(texels, m, view, image, ramp)
                repainted += bake_view(tex_state, sample, repaint_below=options.repaint_below)
        state.coverage = projection.coverage()
        state.views.append(ViewReport(index, state.view_name, generated, repainted, state.coverage, generate_s,
                                      time.perf_counter() - started))
        state.done = index + 1
        report("baked")
    state.stage = "filling"
    textures = projection.textures(options.background)
    state.stage = "done"
    if on_progress is not None:
        on_progress(state)
    return LoopResult(textures, [t.image(s.quality.astype(np.float32)) for t, s in
                                 zip(projection.texels, projection.states)],
                      [s.coverage() for s in projection.states], state.views, projection.warnings)


def _view_request(projection: Projection, view: View, ramp: np.ndarray, options: LoopOptions,
                  index: int) -> dict | None:
    """The generator's arguments for this view, or None when it would repaint nothing."""
    camera = view.camera
    common = {"prompt": options.prompt, "depth": depth_image(view), "seed": options.seed + index,
              "size": (camera.width, camera.height)}
    covered = view.covered
    if not covered.any():
        return None
    repaint = covered & (projection.rendered_quality(view) < options.repaint_below * view.facing * ramp)
    repaint = _grow(~_grow(~repaint, 1), 1)  # opening: specks of one or two pixels are not worth a generation
    if not repaint.any():
        return None
    if not any(s.seen.any() for s in projection.states):  # the first view: text and depth alone
        return {**common, "init": None, "mask": None, "strength": 1.0}
    init = projection.render(view, options.background)
    mask = _grow(repaint, options.mask_grow_px)
    return {**common, "init": init, "mask": mask.astype(np.float32), "strength": options.strength}


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` dilated by ``px`` pixels (a square neighbourhood), by doubling shifts."""
    out = mask.copy()
    reach = 0
    while reach < px:
        step = min(reach + 1, px - reach)
        grown = out.copy()
        for dy in (-step, 0, step):
            for dx in (-step, 0, step):
                if dy or dx:
                    grown[max(dy, 0):out.shape[0] + min(dy, 0), max(dx, 0):out.shape[1] + min(dx, 0)] |= \
                        out[max(-dy, 0):out.shape[0] + min(-dy, 0), max(-dx, 0):out.shape[1] + min(-dx, 0)]
        out = grown
        reach += step
    return out


def _checked_image(image: object, camera: Camera, index: int) -> np.ndarray:
    arr = np.asarray(image)
    want = (camera.height, camera.width, 3)
    if arr.shape != want:
        raise AigcError("generator", f"the generator returned an image of shape {arr.shape} for view {index + 1}; "
                        f"expected {want}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise AigcError("generator", f"the generator returned NaN or infinite values for view {index + 1}")
    return arr


__all__ = ["Generator", "LoopOptions", "LoopResult", "LoopState", "Projection", "ViewReport", "texture_meshes"]
