"""The projection core's geometry, exact and independent of any model (aigc_bridge.projection).

The "generated" images here are analytic: each pixel holds the camera-space position of the surface its
ray hits, found by intersecting the ray with the box or sphere itself (not with our rasteriser), and
NaN where the ray misses, so any background that leaked into a texel would show.
"""

from __future__ import annotations

import numpy as np
import pytest

from aigc_bridge.assets.resize import mip_chain
from aigc_bridge.projection.bake import TextureState, bake_view, sample_view
from aigc_bridge.projection.cameras import look_at, ring_cameras
from aigc_bridge.projection.fill import fill_unseen, pad
from aigc_bridge.projection.shapes import box, uv_sphere
from aigc_bridge.projection.texels import texel_map
from aigc_bridge.projection.views import DEPTH_FLOOR, depth_image, render_view, sample_bilinear

VIEW = 256


def rays(camera):
    """World-space eye and per-pixel ray directions (the ray (rx, ry, -1) in camera space)."""
    rx, ry = camera.pixel_rays()
    x, y = np.meshgrid(rx, ry)
    directions = np.stack([x, y, -np.ones_like(x)], axis=-1) @ camera.rotation
    return camera.position, directions


def hit_boxes(camera, boxes):
    """Per pixel: the ray parameter t of the nearest hit among axis-aligned boxes (centre, half), inf if none.
    With the ray (rx, ry, -1), t is also the depth along the view axis."""
    eye, d = rays(camera)
    best = np.full(d.shape[:2], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for centre, half in boxes:
            lo, hi = np.asarray(centre) - half, np.asarray(centre) + half
            t1, t2 = (lo - eye) / d, (hi - eye) / d
            near, far = np.minimum(t1, t2).max(axis=-1), np.maximum(t1, t2).min(axis=-1)
            hit = (far >= near) & (near > 0)
            best = np.where(hit & (near < best), near, best)
    return best


def hit_sphere(camera, centre, radius):
    eye, d = rays(camera)
    oc = eye - np.asarray(centre)
    a = np.einsum("hwc,hwc->hw", d, d)
    b = 2 * np.einsum("hwc,c->hw", d, oc)
    c = oc @ oc - radius**2
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    return np.where(disc >= 0, t, np.inf)


def position_image(camera, t):
    """Camera-space hit positions (the synthetic "generated" image), NaN where the ray missed."""
    rx, ry = camera.pixel_rays()
    x, y = np.meshgrid(rx, ry)
    image = np.stack([x * t, y * t, -t], axis=-1)
    image[~np.isfinite(t)] = np.nan
    return image


def reprojection_error(camera, decoded_camera_space, texel_world):
    """Pixel distance between where a decoded camera-space point and the texel's own point project."""
    x1, y1, _ = camera.project(decoded_camera_space)
    x2, y2, _ = camera.project(camera.to_camera(texel_world))
    return np.hypot(x1 - x2, y1 - y2)


CUBE = box(subdivisions=2)
SPHERE = uv_sphere(segments=48, rings=24)


def cube_cameras():
    return ring_cameras([CUBE.positions], count=4, elevation_deg=0.0, top=True, bottom=True, width=VIEW,
                        height=VIEW)


def sphere_cameras():
    return ring_cameras([SPHERE.positions], count=8, elevation_deg=-20.0, top=True, width=VIEW, height=VIEW)


@pytest.mark.parametrize("shape", ["cube", "sphere"])
def test_every_texel_filled_from_a_view_decodes_to_its_own_surface_point(shape):
    mesh, cameras = (CUBE, cube_cameras()) if shape == "cube" else (SPHERE, sphere_cameras())
    texels = texel_map(mesh, 256)
    checked = 0
    for camera in cameras:
        t = hit_boxes(camera, [((0, 0, 0), 1.0)]) if shape == "cube" else hit_sphere(camera, (0, 0, 0), 1.0)
        image = position_image(camera, t)
        view = render_view([mesh], camera)
        state = TextureState.empty(texels)
        bake_view(state, sample_view(texels, 0, view, image))
        filled = state.seen
        decoded = state.colours()[filled]
        assert np.isfinite(decoded).all(), f"{camera.name}: background leaked into a texel"
        error = reprojection_error(camera, decoded, texels.position[filled])
        assert error.max() <= 1.0, f"{camera.name}: {error.max():.3f} px"
        checked += int(filled.sum())
    assert checked >= 0.99 * texels.count  # the checks reached (nearly) every texel


@pytest.mark.parametrize("shape,minimum", [("cube", 0.99), ("sphere", 0.99)])
def test_views_cover_the_surface(shape, minimum):
    """A cube from 6 views (4 around + top + bottom), a sphere from a ring of 8 (looking up at 20 degrees,
    so that the ring sees the underside) + top."""
    mesh, cameras = (CUBE, cube_cameras()) if shape == "cube" else (SPHERE, sphere_cameras())
    texels = texel_map(mesh, 256)
    state = TextureState.empty(texels)
    for camera in cameras:
        view = render_view([mesh], camera)
        bake_view(state, sample_view(texels, 0, view, np.ones((VIEW, VIEW, 3))))
    assert state.coverage() >= minimum


def test_sphere_ring_above_the_horizon_misses_the_underside():
    """The counterpart that shows the coverage test can fail: a ring looking down leaves the bottom unseen."""
    texels = texel_map(SPHERE, 128)
    state = TextureState.empty(texels)
    for camera in ring_cameras([SPHERE.positions], count=8, elevation_deg=20.0, top=True, width=128, height=128):
        bake_view(state, sample_view(texels, 0, render_view([SPHERE], camera), np.ones((128, 128, 3))))
    assert state.coverage() < 0.95
    unseen = texels.position[~state.seen]
    assert (unseen[:, 2] < -0.5).all()  # what is missing is the bottom cap


def test_a_box_hidden_behind_another_takes_nothing_from_the_view_that_cannot_see_it():
    front = box((0, 0, 0), (1, 1, 1), name="front")
    hidden = box((0, 3, 0), (0.5, 0.5, 0.5), name="hidden")
    camera = look_at((0, -6, 0), (0, 0, 0), width=VIEW, height=VIEW)
    texels = texel_map(hidden, 128)
    image = np.ones((VIEW, VIEW, 3))
    both = render_view([front, hidden], camera)
    assert len(sample_view(texels, 1, both, image).texel) == 0
    alone = render_view([hidden], camera)
    assert len(sample_view(texels, 0, alone, image).texel) > 100  # the view does see it when nothing is in front
    assert (both.mesh == 1).sum() == 0


def test_a_partly_hidden_box_takes_colour_only_where_the_eye_sees_it():
    front = box((0, 0, 0), (1, 1, 1), name="front")
    behind = box((1.2, 3, 0.4), (1, 1, 1), name="behind")  # sticks out to the right of and above the front box
    camera = look_at((0.3, -7, 0.8), (0.5, 1, 0.2), width=VIEW, height=VIEW)
    texels = texel_map(behind, 256)
    sample = sample_view(texels, 1, render_view([front, behind], camera), np.ones((VIEW, VIEW, 3)))
    points = texels.position[sample.texel]
    # Analytic occlusion: the segment from the eye to the point must not pass through the front box.
    eye = camera.position
    d = points - eye
    with np.errstate(divide="ignore"):
        t1, t2 = (-1 - eye) / d, (1 - eye) / d
    near, far = np.minimum(t1, t2).max(axis=1), np.maximum(t1, t2).min(axis=1)
    blocked = (far >= near) & (near < 1 - 1e-3) & (far > 0)
    assert len(points) > 500
    assert not blocked.any(), f"{int(blocked.sum())} occluded texels took colour"
    facing_eye = np.einsum("ij,ij->i", texels.normal, eye - texels.position) > 0
    assert len(points) < facing_eye.sum()  # and some texels facing the eye did stay hidden


def test_the_depth_image_matches_an_analytic_depth_map():
    boxes = [((0, 0, 0), 1.0), ((2.5, 1, -0.5), 0.5)]
    meshes = [box(c, (h, h, h), name=f"b{i}") for i, (c, h) in enumerate(boxes)]
    camera = look_at((4, -6, 3), (0.8, 0.3, 0), width=VIEW, height=VIEW)
    t = hit_boxes(camera, boxes)
    hit = np.isfinite(t)
    inverse = 1 / t[hit]
    expected = np.zeros(t.shape)
    expected[hit] = DEPTH_FLOOR + (1 - DEPTH_FLOOR) * (inverse - inverse.min()) / (inverse.max() - inverse.min())
    got = depth_image(render_view(meshes, camera))
    assert got.dtype == np.float32 and got.shape == (VIEW, VIEW)
    assert ((got > 0) == hit).all()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[hit].max() == pytest.approx(1.0) and got[hit].min() == pytest.approx(DEPTH_FLOOR)


def seam_uvs(mesh):
    """Points on UV island borders: along every UV edge that only one triangle uses, at 5 places."""
    edges = {}
    for t, uv in enumerate(mesh.uvs):
        for k in range(3):
            a, b = tuple(uv[k]), tuple(uv[(k + 1) % 3])
            edges.setdefault(tuple(sorted((a, b))), []).append(t)
    border = [np.array(e) for e, tris in edges.items() if len(tris) == 1]
    ts = np.linspace(0.1, 0.9, 5)[:, None]
    return np.concatenate([(1 - ts) * a + ts * b for a, b in border])


@pytest.mark.parametrize("shape", ["cube", "sphere"])
def test_after_padding_no_mip_level_shows_background_along_the_seams(shape):
    mesh, cameras = (CUBE, cube_cameras()) if shape == "cube" else (SPHERE, sphere_cameras()[:4])  # not all seen
    texels = texel_map(mesh, 128)
    state = TextureState.empty(texels)
    for camera in cameras:
        bake_view(state, sample_view(texels, 0, render_view([mesh], camera), np.ones((VIEW, VIEW, 3))))
    filled = fill_unseen(mesh, texels, state.colours(), state.seen)
    texture = pad(texels, filled)
    uv = seam_uvs(mesh)
    assert len(uv) > 100
    for level, image in enumerate(mip_chain(texture)):
        scale = 2**level
        sampled = sample_bilinear(image, uv)
        assert np.abs(sampled - 1.0).max() < 1e-5, f"mip level {level} ({texture.shape[0] // scale} px)"
    # Without the padding the same sampling does see the background (black) along the seams.
    unpadded = texels.image(filled, 0.0)
    assert sample_bilinear(unpadded, uv).min() < 0.9


def test_unseen_texels_are_filled_from_the_surface_around_them_across_seams():
    """Half the sphere is seen: red where x > 0 would be seen... here the seen colour is the texel's own
    height (z), so the fill must continue it smoothly, the same on both sides of the UV seam at u = 0."""
    texels = texel_map(SPHERE, 128)
    state = TextureState.empty(texels)
    seen = texels.position[:, 2] > -0.3  # everything but the bottom cap
    state.colour_sum[seen] = np.repeat(texels.position[seen, 2:3], 3, axis=1)
    state.weight_sum[seen] = 1.0
    state.quality[seen] = 1.0
    filled = fill_unseen(SPHERE, texels, state.colours(), state.seen)
    cap = ~seen
    assert np.abs(filled[cap, 0] - (-0.3)).max() < 0.15  # continued from the boundary ring, not left black
    # Either side of the seam (u near 0 and near 1) at the same height the fill agrees.
    u = (texels.index % 128 + 0.5) / 128
    left, right = cap & (u < 0.03), cap & (u > 0.97)
    assert left.any() and right.any()
    assert abs(filled[left, 0].mean() - filled[right, 0].mean()) < 0.02


def test_render_the_partially_textured_mesh_into_a_view():
    """A texture that encodes each texel's world position, rendered into a view, gives back the position
    the view sees at each pixel (to within the texel size)."""
    from aigc_bridge.projection.views import render_textures

    texels = texel_map(CUBE, 256)
    texture = pad(texels, texels.position)
    camera = look_at((3, -4, 2.5), (0, 0, 0), width=VIEW, height=VIEW)
    view = render_view([CUBE], camera)
    rendered = render_textures(view, [texture], background=-9.0)
    assert (rendered[~view.covered] == -9.0).all()
    error = np.linalg.norm(rendered[view.covered] - view.position[view.covered], axis=1)
    assert np.median(error) < 0.01 and error.max() < 2 * 2 / (256 / 3 * 0.96)  # two texels of a face's island
