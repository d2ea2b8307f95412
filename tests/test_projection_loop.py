"""The multi-view texturing loop (aigc_bridge.projection.loop) with synthetic generators: what each view is
asked for, what it may repaint, progress, cancel. The generators here are the test's own image sources,
standing in for the engine (which the sidecar passes in); nothing else is faked."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from aigc_bridge.errors import AigcError, Cancelled, InvalidRequest
from aigc_bridge.projection.bake import bake_view, sample_view
from aigc_bridge.projection.cameras import ring_cameras
from aigc_bridge.projection.loop import LoopOptions, LoopState, Projection, texture_meshes
from aigc_bridge.projection.shapes import box, uv_sphere
from aigc_bridge.projection.texels import texel_map
from aigc_bridge.projection.views import depth_image, render_view

VIEW = 128
SPHERE = uv_sphere(segments=32, rings=16)


def cameras(count=8):
    return ring_cameras([SPHERE.positions], count=count, elevation_deg=-20.0, top=True, width=VIEW, height=VIEW)


class Recorder:
    """A generator that paints view k in a flat colour encoding k and records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, *, prompt, depth, init, mask, strength, seed, size):
        self.calls.append({"prompt": prompt, "depth": depth, "init": init, "mask": mask, "strength": strength,
                           "seed": seed, "size": size})
        k = len(self.calls) - 1
        image = np.empty((size[1], size[0], 3), np.float32)
        image[...] = (k / 16.0, 0.25, 0.75)
        if init is not None:  # an inpainting model keeps the unmasked pixels
            keep = mask < 0.5
            image[keep] = init[keep]
        return image


def test_view_one_from_depth_alone_then_each_view_inpaints_what_was_not_seen_well():
    gen = Recorder()
    cams = cameras()
    options = LoopOptions("red brick wall", seed=7, texture_size=128, strength=0.9)
    result = texture_meshes([SPHERE], cams, gen, options)

    first = gen.calls[0]
    assert first["init"] is None and first["mask"] is None and first["strength"] == 1.0
    assert first["seed"] == 7 and first["size"] == (VIEW, VIEW) and first["prompt"] == "red brick wall"
    np.testing.assert_array_equal(first["depth"], depth_image(render_view([SPHERE], cams[0])))
    for k, call in enumerate(gen.calls[1:], start=1):
        assert call["init"].shape == (VIEW, VIEW, 3) and call["mask"].shape == (VIEW, VIEW)
        assert call["strength"] == 0.9 and set(np.unique(call["mask"])) <= {0.0, 1.0}
        assert 0 < call["mask"].mean() < 1, f"view {k} repaints part of the image, not all or nothing"
    # View 2 (45 degrees from the front) sees part of what view 1 painted: that part is kept in its init
    # image (view 1's colour 0.0 in red) and left out of its mask.
    second = gen.calls[1]
    kept = (second["mask"] == 0) & (second["depth"] > 0)
    assert kept.sum() > 100
    assert np.abs(second["init"][kept][:, 0] - 0.0).max() < 1e-5
    assert result.coverage[0] >= 0.99
    assert [v.generated for v in result.views] == [True] * len(cams)


def test_texels_seen_well_keep_their_colour_and_each_repainted_texel_was_seen_better():
    gen = Recorder()
    cams = cameras()
    result = texture_meshes([SPHERE], cams, gen, LoopOptions("stone", texture_size=128))
    texture = result.texture if hasattr(result, "texture") else result.textures[0]
    texels = texel_map(SPHERE, 128)
    painted_by = np.rint(texels.gather(texture)[:, 0] * 16).astype(int)
    # The front view's centre (facing it squarely) stays the front view's: later views see it worse.
    front = cams[0]
    to_eye = front.position - texels.position
    facing = np.einsum("ij,ij->i", texels.normal, to_eye / np.linalg.norm(to_eye, axis=1, keepdims=True))
    centre = facing > 0.95
    assert centre.sum() > 50 and (painted_by[centre] == 0).all()
    # Every view that painted anything is one that could see the texel.
    assert set(np.unique(painted_by)) <= set(range(len(cams)))
    quality = texels.gather(result.quality[0])
    assert (quality > 0).mean() >= 0.99 and quality.max() <= 1.0


def test_the_loop_bakes_every_view_where_it_belongs():
    """A generator that paints each pixel with the world position the view sees there: after the whole
    loop (kept parts, repainted parts, fill and padding) every seen texel holds its own surface point."""
    mesh = box(subdivisions=2)
    cams = ring_cameras([mesh.positions], count=4, elevation_deg=10.0, top=True, bottom=True, width=VIEW,
                        height=VIEW)
    views = {id(c): render_view([mesh], c) for c in cams}
    order = iter(cams)

    def positions(*, prompt, depth, init, mask, strength, seed, size):
        view = views[id(next(order))]
        return np.where(view.covered[..., None], view.position, 0.0) / 4 + 0.5  # into 0..1

    result = texture_meshes([mesh], cams, positions, LoopOptions("x", texture_size=128))
    texels = texel_map(mesh, 128)
    decoded = (texels.gather(result.textures[0]) - 0.5) * 4
    seen = texels.gather(result.quality[0]) > 0
    error = np.linalg.norm(decoded[seen] - texels.position[seen], axis=1)
    footprint = 2 * 1.1 * np.sqrt(3) / VIEW * 3  # a few pixels at the views' distance, in world units
    assert seen.mean() >= 0.99 and np.percentile(error, 99) < footprint


def test_a_view_with_nothing_left_to_repaint_is_not_generated():
    gen = Recorder()
    cams = cameras(count=2)
    result = texture_meshes([SPHERE], [cams[0], cams[0]], gen, LoopOptions("wood", texture_size=64))
    assert len(gen.calls) == 1
    assert [v.generated for v in result.views] == [True, False] and result.views[1].repainted == 0


def test_progress_per_view_and_cancel_between_views():
    gen = Recorder()
    seen = []

    def progress(state: LoopState):
        seen.append((state.stage, state.done, state.view_name))
        if state.stage == "baked" and state.done == 2:
            state.cancel()

    with pytest.raises(Cancelled, match="after 2 of 9 views"):
        texture_meshes([SPHERE], cameras(), gen, LoopOptions("wood", texture_size=64), on_progress=progress)
    assert len(gen.calls) == 2  # stopped before the third view's generation
    assert seen[:4] == [("rendering", 0, "ring 1 (+0 deg)"), ("generating", 0, "ring 1 (+0 deg)"),
                        ("baking", 0, "ring 1 (+0 deg)"), ("baked", 1, "ring 1 (+0 deg)")]


def test_cancel_from_another_thread_stops_at_the_next_view():
    state = LoopState(total=0)
    started = threading.Event()
    release = threading.Event()

    def slow(**kwargs):
        started.set()
        release.wait(10)
        return Recorder()(**kwargs)

    errors = []

    def run():
        try:
            texture_meshes([SPHERE], cameras(), slow, LoopOptions("wood", texture_size=64), state=state)
        except Cancelled as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(10)
    state.cancel()
    release.set()
    worker.join(10)
    assert errors and state.done == 0  # the view in flight is thrown away, not baked


def test_a_generator_that_returns_the_wrong_size_is_named():
    def wrong(*, size, **_):
        return np.zeros((size[1] // 2, size[0], 3))

    with pytest.raises(AigcError, match=r"shape \(64, 128, 3\) for view 1; expected \(128, 128, 3\)"):
        texture_meshes([SPHERE], cameras(), wrong, LoopOptions("wood", texture_size=64))


@pytest.mark.parametrize("kwargs,field", [
    ({"prompt": " "}, "prompt"), ({"texture_size": 1000}, "texture_size"), ({"texture_size": 8192}, "texture_size"),
    ({"strength": 0.0}, "strength"), ({"repaint_below": 1.5}, "repaint_below"), ({"seed": -1}, "seed"),
    ({"mask_grow_px": 100}, "mask_grow_px"),
])
def test_loop_options_are_checked(kwargs, field):
    with pytest.raises(InvalidRequest) as info:
        LoopOptions(**{"prompt": "wood", **kwargs})
    assert info.value.field == field


def test_several_objects_share_the_views_and_get_a_texture_each():
    left, right = box((-1.5, 0, 0), (1, 1, 1), name="left"), box((1.5, 0, 0), (0.5, 0.5, 0.5), name="right")
    cams = ring_cameras([left.positions, right.positions], count=6, elevation_deg=25.0, top=True, width=VIEW,
                        height=VIEW)
    projection = Projection.prepare([left, right], cams, 64)
    assert len(projection.texels) == 2
    result = texture_meshes([left, right], cams, Recorder(), LoopOptions("wood", texture_size=64))
    assert [t.shape for t in result.textures] == [(64, 64, 3), (64, 64, 3)]
    assert min(result.coverage) > 0.7  # bottoms are not seen from above


def test_the_next_view_sees_what_earlier_views_baked():
    """Projection.render (the init image): after the front view baked world positions, the 45-degree view
    shows, wherever it sees surface the front view saw, the position of that very surface."""
    mesh = box(subdivisions=2)
    cams = ring_cameras([mesh.positions], count=8, elevation_deg=10.0, top=False, width=VIEW, height=VIEW)
    projection = Projection.prepare([mesh], cams, 256)
    front, side = render_view([mesh], cams[0]), render_view([mesh], cams[1])
    bake_view(projection.states[0], sample_view(projection.texels[0], 0, front, front.position), repaint_below=0.7)
    rendered = projection.render(side, background=(9.0, 9.0, 9.0))
    assert (rendered[~side.covered] == 9.0).all()
    quality = projection.rendered_quality(side)
    known = side.covered & (quality > 0)
    assert known.sum() > 0.3 * side.covered.sum()
    error = np.linalg.norm(rendered[known] - side.position[known], axis=1)
    texel = 2.0 / (256 / 3)  # a face's island is about a third of the texture across
    assert np.percentile(error, 99) < 1.5 * texel
    # What the front view did not see is filled from the surface around it: finite, and not the background.
    unknown = side.covered & (quality == 0)
    assert unknown.any() and np.isfinite(rendered[unknown]).all() and (rendered[unknown] != 9.0).all()
