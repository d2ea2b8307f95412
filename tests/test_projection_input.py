"""Bad input to the projection core: a clear error naming the field and the limit, or a warning saying what
was done (aigc_bridge.projection.mesh, cameras, texels)."""

from __future__ import annotations

import numpy as np
import pytest

from aigc_bridge.errors import InvalidRequest
from aigc_bridge.projection.cameras import Camera, check_outside, checked_camera, look_at, ring_cameras
from aigc_bridge.projection.loop import Projection
from aigc_bridge.projection.mesh import MAX_TRIANGLES, Mesh
from aigc_bridge.projection.shapes import box, uv_sphere
from aigc_bridge.projection.texels import texel_map


def cube_arrays(**change):
    mesh = box()
    arrays = {"positions": mesh.positions, "triangles": mesh.triangles, "uvs": mesh.uvs}
    arrays.update(change)
    return arrays


def test_a_mesh_over_the_limit_is_refused_with_the_limit():
    n = MAX_TRIANGLES + 1
    with pytest.raises(InvalidRequest, match=r"2,000,001 triangles; at most 2,000,000") as info:
        Mesh.checked(np.zeros((3, 3)), np.zeros((n, 3), np.int32), np.zeros((n, 3, 2), np.float32), "Statue")
    assert info.value.field == "mesh 'Statue' triangles"


@pytest.mark.parametrize("change,match", [
    ({"positions": np.zeros((5, 2))}, r"positions must have shape \(N, 3\)"),
    ({"triangles": np.where(box().triangles == 5, 99, box().triangles)}, r"index vertices 0\.\.23, found 0\.\.99"),
    ({"triangles": np.zeros((0, 3), int), "uvs": np.zeros((0, 3, 2))}, "has no triangles"),
    ({"uvs": np.zeros((3, 3, 2))}, r"one \(3, 2\) entry per triangle: 3 for 12"),
    ({"triangles": np.zeros((12, 3), np.float32)}, "triangles must be integers"),
])
def test_malformed_arrays_are_named(change, match):
    with pytest.raises(InvalidRequest, match=match):
        Mesh.checked(**cube_arrays(**change), name="Crate")


def test_nan_positions_are_refused():
    positions = box().positions.copy()
    positions[3, 1] = np.nan
    with pytest.raises(InvalidRequest, match="positions contain NaN") as info:
        Mesh.checked(**cube_arrays(positions=positions), name="Crate")
    assert info.value.field == "mesh 'Crate' positions"


def test_zero_area_faces_are_dropped_and_said_so():
    arrays = cube_arrays()
    tris = np.concatenate([arrays["triangles"], [[0, 0, 1], [2, 2, 2]]])
    uvs = np.concatenate([arrays["uvs"], np.zeros((2, 3, 2))])
    mesh = Mesh.checked(arrays["positions"], tris, uvs, "Crate")
    assert len(mesh.triangles) == 12
    assert any("dropped 2 zero-area faces" in w for w in mesh.warnings)


def test_a_mesh_of_only_zero_area_faces_is_refused():
    with pytest.raises(InvalidRequest, match="every face has zero area"):
        Mesh.checked(np.zeros((3, 3)), [[0, 1, 2]], np.zeros((1, 3, 2)), "Flat")


def test_faces_without_uv_area_are_refused_when_they_are_a_large_part():
    arrays = cube_arrays(uvs=np.full((12, 3, 2), 0.5))
    with pytest.raises(InvalidRequest, match=r"12 faces \(100.0% of the surface\) have no area in the UV map.*"
                                             "Smart UV Project") as info:
        Mesh.checked(**arrays, name="Crate")
    assert info.value.field == "mesh 'Crate' uvs"


def test_a_few_faces_without_uv_area_are_a_warning():
    sphere = uv_sphere(segments=32, rings=16)
    uvs = sphere.uvs.copy()
    uvs[5] = 0.25  # one face of 960 collapsed to a point in the UV map
    mesh = Mesh.checked(sphere.positions, sphere.triangles, uvs, "Ball")
    assert any("1 faces" in w and "no area in the UV map" in w for w in mesh.warnings)


def test_uvs_outside_the_unit_square_are_refused():
    arrays = cube_arrays()
    with pytest.raises(InvalidRequest, match="outside 0..1.*pack the UVs"):
        Mesh.checked(**cube_arrays(uvs=arrays["uvs"] + 1.0), name="Crate")


def test_overlapping_uvs_are_a_warning_that_says_what_was_done():
    arrays = cube_arrays()
    uvs = arrays["uvs"].copy()
    uvs[2:4] = uvs[0:2]  # the second face is stacked on the first in the UV map
    mesh = Mesh.checked(arrays["positions"], arrays["triangles"], uvs, "Crate")
    texels = texel_map(mesh, 64)
    (warning,) = texels.warnings
    assert "4 faces (33.3% of the surface) overlap others in the UV map" in warning
    assert "baked from one of them" in warning
    # Each shared texel holds the surface point of exactly one face.
    assert len(np.unique(texels.index)) == texels.count


def test_a_clean_uv_layout_has_no_overlap_even_where_edges_run_through_texel_centres():
    """The box's face diagonals pass exactly through texel centres at these sizes: the top-left rule gives
    each such texel to one triangle, so nothing is reported as overlapping and nothing is left out."""
    mesh = Mesh.checked(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float), [[0, 1, 2], [0, 2, 3]],
                        np.array([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], float), "Quad")
    for size in (16, 64, 256):
        texels = texel_map(mesh, size)
        assert texels.warnings == () and texels.count == size * size


def test_mirrored_uvs_are_a_warning():
    arrays = cube_arrays()
    uvs = arrays["uvs"].copy()
    uvs[0:2, :, 0] = 1.0 - uvs[0:2, :, 0] - 0.4  # one face flipped in u (and kept inside 0..1)
    mesh = Mesh.checked(arrays["positions"], arrays["triangles"], uvs, "Crate")
    assert any("2 faces have mirrored UVs" in w and "baked as they are" in w for w in mesh.warnings)


def test_a_camera_inside_an_object_is_refused_naming_both():
    cube = box(name="Crate")
    inside = look_at((0.2, 0.1, 0.3), (1, 1, 1), name="Camera.002")
    outside = look_at((0, -5, 0), (0, 0, 0))
    with pytest.raises(InvalidRequest, match=r"cameras\[1\] \('Camera.002'\) is inside 'Crate'") as info:
        check_outside([outside, inside], [cube])
    assert info.value.field == "cameras[1]"
    check_outside([outside], [cube])
    # An eye inside the bounding box but outside the object (an L shape) is fine.
    l_shape = [box((0, 0, 0), (1, 1, 1), name="a"), box((1.5, 0, 0), (0.5, 0.5, 0.5), name="b")]
    check_outside([look_at((1.5, 0, 1.0), (0, 0, 0))], l_shape)
    with pytest.raises(InvalidRequest):
        Projection.prepare([cube], [inside], 64)


@pytest.mark.parametrize("change,field", [
    ({"world_to_camera": np.diag([2.0, 2.0, 2.0, 1.0])}, "cameras[0].world_to_camera"),
    ({"width": 8}, "cameras[0].width"),
    ({"fx": 0.0}, "cameras[0].fx"),
    ({"projection": "fisheye"}, "cameras[0].projection"),
])
def test_bad_cameras_are_named(change, field):
    good = look_at((0, -5, 0), (0, 0, 0))
    values = {f: getattr(good, f) for f in Camera.__dataclass_fields__}
    values.update(change)
    with pytest.raises(InvalidRequest) as info:
        checked_camera(Camera(**values), 0)
    assert info.value.field == field


def test_ring_options_are_checked():
    with pytest.raises(InvalidRequest, match="no views"):
        ring_cameras([box().positions], count=0, top=False)
    with pytest.raises(InvalidRequest) as info:
        ring_cameras([box().positions], elevation_deg=95)
    assert info.value.field == "elevation_deg"
