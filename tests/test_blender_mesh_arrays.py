"""Objects and cameras as projection arrays, in real Blender (bpy 5.0 as a module, in this process):
blender_addon/mesh_arrays.py against Blender's own evaluated meshes and camera projection, and the arrays
fed to the projection core."""

from __future__ import annotations

import importlib.util
import os
import tempfile

import numpy as np
import pytest

if importlib.util.find_spec("bpy") is None:
    pytest.skip("bpy is not installed", allow_module_level=True)

_HOME = tempfile.mkdtemp(prefix="aigc-blender-mesh-test-")
os.environ.setdefault("BLENDER_USER_RESOURCES", os.path.join(_HOME, "user"))  # never the developer's config
os.environ.setdefault("MESA_SHADER_CACHE_DIR", os.path.join(_HOME, "mesa"))

import bpy  # noqa: E402, I001  (after the environment above)
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Vector  # noqa: E402

from aigc_bridge.projection.cameras import Camera, checked_camera  # noqa: E402
from aigc_bridge.projection.mesh import Mesh  # noqa: E402
from aigc_bridge.projection.texels import texel_map  # noqa: E402
from blender_addon import mesh_arrays  # noqa: E402


@pytest.fixture
def empty():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield bpy.context.scene


def test_the_evaluated_mesh_in_world_space_with_its_uvs(empty):
    bpy.ops.mesh.primitive_cube_add(location=(1.0, -2.0, 0.5), rotation=(0.3, 0.2, 1.1), scale=(1.5, 0.7, 1.0))
    cube = bpy.context.object
    cube.modifiers.new("Subdivision", "SUBSURF").levels = 1
    (arrays,), report = mesh_arrays.extract([cube])
    assert report == [] and not arrays.made_uvs and arrays.uv_map == "UVMap"

    # Blender's own view of the same evaluated mesh, read the slow way.
    evaluated = cube.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    mesh.calc_loop_triangles()
    world = np.array([tuple(evaluated.matrix_world @ v.co) for v in mesh.vertices])
    tris = np.array([tuple(t.vertices) for t in mesh.loop_triangles])
    uvs = np.array([[tuple(mesh.uv_layers.active.data[i].uv) for i in t.loops] for t in mesh.loop_triangles])
    evaluated.to_mesh_clear()

    assert len(tris) == 6 * 4 * 2  # modifiers applied: 24 quads after one level of subdivision
    np.testing.assert_allclose(arrays.positions, world, atol=1e-5)
    np.testing.assert_array_equal(arrays.triangles, tris)
    np.testing.assert_allclose(arrays.uvs, uvs, atol=1e-7)
    assert arrays.positions.dtype == np.float32 and arrays.triangles.dtype == np.int32

    checked = Mesh.checked(arrays.positions, arrays.triangles, arrays.uvs, arrays.name)
    assert checked.warnings == () and texel_map(checked, 64).warnings == ()


def test_ngons_are_triangulated_and_keep_their_area(empty):
    bpy.ops.mesh.primitive_cylinder_add(vertices=12, radius=1.0, depth=2.0)  # two 12-gon caps, 12 quads
    cylinder = bpy.context.object
    (arrays,), _ = mesh_arrays.extract([cylinder])
    assert len(arrays.triangles) == 12 * 2 + 2 * 10
    corners = arrays.positions[arrays.triangles].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    assert area.sum() == pytest.approx(sum(p.area for p in cylinder.data.polygons), rel=1e-5)


def test_the_active_uv_map_is_the_one_sent(empty):
    bpy.ops.mesh.primitive_plane_add()
    plane = bpy.context.object
    second = plane.data.uv_layers.new(name="Bake")
    for loop in second.data:
        loop.uv = (loop.uv[0] * 0.5, loop.uv[1] * 0.25)
    plane.data.uv_layers.active = second
    (arrays,), _ = mesh_arrays.extract([plane])
    assert arrays.uv_map == "Bake"
    assert arrays.uvs[..., 0].max() == pytest.approx(0.5) and arrays.uvs[..., 1].max() == pytest.approx(0.25)


def test_an_object_without_uvs_gets_a_smart_uv_project_and_the_report_says_so(empty):
    bpy.ops.mesh.primitive_cylinder_add(calc_uvs=False)
    barrel = bpy.context.object
    barrel.name = "Barrel"
    assert not barrel.data.uv_layers
    (arrays,), report = mesh_arrays.extract([barrel])
    assert arrays.made_uvs and report == ["'Barrel' had no UV map: made one with Smart UV Project (UVMap)"]
    assert [layer.name for layer in barrel.data.uv_layers] == ["UVMap"]
    assert arrays.uvs.min() >= 0.0 and arrays.uvs.max() <= 1.0
    checked = Mesh.checked(arrays.positions, arrays.triangles, arrays.uvs, arrays.name)
    assert texel_map(checked, 128).warnings == ()  # islands that do not overlap


def test_a_selection_with_a_non_mesh_object_is_refused_and_nothing_changes(empty):
    bpy.ops.mesh.primitive_cylinder_add(calc_uvs=False)
    barrel = bpy.context.object
    bpy.ops.object.text_add()
    label = bpy.context.object
    label.name = "Label"
    with pytest.raises(mesh_arrays.MeshRefused) as info:
        mesh_arrays.extract([barrel, label])
    assert info.value.code == "not_a_mesh" and info.value.field == "Label"
    assert "'Label' is a font, not a mesh" in str(info.value.user_message)
    assert "Object > Convert > Mesh" in info.value.user_message.fix
    assert not barrel.data.uv_layers  # the barrel, checked first, was not given UVs


def test_a_mesh_over_the_limit_is_refused_before_anything_changes(empty):
    bpy.ops.mesh.primitive_cylinder_add(calc_uvs=False)
    barrel = bpy.context.object
    barrel.name = "Barrel"
    barrel.modifiers.new("Subdivision", "SUBSURF").levels = 2
    with pytest.raises(mesh_arrays.MeshRefused, match=r"'Barrel' has 1,536 triangles \(modifiers applied\); "
                                                      r"at most 1,000") as info:
        mesh_arrays.extract([barrel], max_triangles=1000)
    assert info.value.code == "mesh_too_large" and "Decimate" in info.value.user_message.fix
    assert not barrel.data.uv_layers
    assert len(mesh_arrays.extract([barrel], max_triangles=3000)[0][0].triangles) == 1536


@pytest.mark.parametrize("kind", ["PERSP", "ORTHO"])
def test_a_scene_camera_projects_like_blender(empty, kind):
    scene = empty
    scene.render.resolution_x, scene.render.resolution_y = 1280, 720
    bpy.ops.object.camera_add(location=(6.0, -5.0, 3.0), rotation=(1.2, 0.0, 0.85))
    camera = bpy.context.object
    camera.data.type = kind
    camera.data.shift_x, camera.data.shift_y = 0.1, -0.05
    camera.data.lens, camera.data.ortho_scale = 35.0, 7.0
    bpy.context.view_layer.update()

    fields = mesh_arrays.camera_arrays(camera, scene, 512, 288)
    ours = checked_camera(Camera(**fields), 0)
    rng = np.random.default_rng(0)
    points = rng.uniform(-2, 2, (200, 3))
    x, y, depth = ours.project(ours.to_camera(points))
    for point, px, py, d in zip(points, x, y, depth):
        ndc = world_to_camera_view(scene, camera, Vector(point))  # (0..1, 0..1 up, depth)
        assert px == pytest.approx(ndc.x * 512, abs=1e-3)
        assert py == pytest.approx((1 - ndc.y) * 288, abs=1e-3)
        if kind == "PERSP":
            assert d == pytest.approx(ndc.z, abs=1e-5)


def test_a_panoramic_or_non_camera_object_is_refused(empty):
    bpy.ops.object.camera_add()
    camera = bpy.context.object
    camera.data.type = "PANO"
    with pytest.raises(mesh_arrays.MeshRefused, match="panoramic"):
        mesh_arrays.camera_arrays(camera, empty, 512, 512)
    bpy.ops.mesh.primitive_cube_add()
    with pytest.raises(mesh_arrays.MeshRefused, match="is not a camera"):
        mesh_arrays.camera_arrays(bpy.context.object, empty, 512, 512)
