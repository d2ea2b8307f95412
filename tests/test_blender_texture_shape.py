"""Texture from Shape end to end: real Blender (the bpy module, in this process) against a real `aigc-bridge
serve` process with the shipped texture-mini. The evaluated mesh goes out as arrays, the baked texture comes
back for the object's own UV map through its material, glTF carries it, re-running replaces it, cancel and
bad input leave the scene as it was."""

from __future__ import annotations

import time

import numpy as np
import pytest

from .test_blender_addon import _glb, addon, decoded, draw, fresh_file, labels, mini, pixels, pump  # noqa: F401

bpy = pytest.importorskip("bpy")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def shape_scene(addon, mini):  # noqa: F811
    with fresh_file(addon, mini, 5.0) as settings:
        settings.shape_views, settings.shape_top, settings.shape_bottom = 4, True, True
        settings.shape_view_size, settings.shape_texture_size = 64, "256"
        settings.seed_mode, settings.seed = "FIXED", 3
        yield addon


def brick_cube() -> bpy.types.Object:
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.object
    cube.name = "Wall"
    cube["aigc_prompt"] = "red brick wall"
    old = bpy.data.materials.new("Old")
    cube.data.materials.append(old)
    cube.select_set(True)
    return cube


def face_colours(obj: bpy.types.Object, image: bpy.types.Image) -> list[np.ndarray]:
    """The texture's mean colour around each face's UV centre (the face's middle on the surface)."""
    px = pixels(image)[..., :3].astype(np.float32) / 255.0
    h, w = px.shape[:2]
    uv = obj.data.uv_layers[obj.active_material["aigc_uv_map"]].data
    out = []
    for poly in obj.data.polygons:
        centre = np.mean([tuple(uv[i].uv) for i in poly.loop_indices], axis=0)
        col, row = int(centre[0] * w), int((1 - centre[1]) * h)
        out.append(px[max(row - 6, 0):row + 6, max(col - 6, 0):col + 6].reshape(-1, 3).mean(axis=0))
    return out


def test_red_brick_cube_baked_into_its_own_uvs_and_exported(shape_scene, tmp_path) -> None:
    runner = shape_scene.runner
    cube = brick_cube()
    cube.data.uv_layers.new(name="Lightmap")  # a second UV map: the active one (UVMap) gets the texture
    cube.data.uv_layers.active = cube.data.uv_layers["UVMap"]
    started = time.perf_counter()
    assert bpy.ops.aigc.texture_from_shape(mode="TIMER") == {"FINISHED"}
    send_s = time.perf_counter() - started
    assert runner.STATE.run is not None  # non-blocking: the timer follows the job
    seen = []
    durations = pump(runner, timeout=120, until=lambda: (seen.append(labels(draw(shape_scene))) and False))
    assert max(durations) < 0.5 and send_s < 2.0
    assert any("view " in text and "/6" in text for text in seen) or runner.STATE.run is None
    assert runner.STATE.error is None, runner.STATE.error
    info = runner.STATE.info
    assert "Wall" in info and "6 views" in info and "no depth ControlNet" in info

    material = cube.active_material
    assert material.get("aigc_generated") and material["aigc_uv_map"] == "UVMap"
    assert all(slot.material == material for slot in cube.material_slots)
    tree = material.node_tree
    image_node = tree.nodes["AIGC albedo"]
    uv_node = tree.nodes["AIGC UV Map"]
    assert uv_node.uv_map == "UVMap" and image_node.inputs["Vector"].links[0].from_node == uv_node
    bsdf = tree.nodes["AIGC BSDF"]
    assert bsdf.inputs["Base Color"].links[0].from_node == image_node
    image = image_node.image
    assert tuple(image.size) == (256, 256) and image.colorspace_settings.name == "sRGB"
    for i, (r, g, b) in enumerate(face_colours(cube, image)):  # red on all six faces
        assert r > g + 0.12 and r > b + 0.12, f"face {i}: {r:.2f} {g:.2f} {b:.2f}"

    out = tmp_path / "wall.glb"
    assert bpy.ops.export_scene.gltf(filepath=str(out), export_format="GLB") == {"FINISHED"}
    doc, binary = _glb(out)
    exported = next(m for m in doc["materials"] if m["name"] == material.name)
    texture = doc["textures"][exported["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
    view = doc["bufferViews"][doc["images"][texture["source"]]["bufferView"]]
    png = binary[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]
    assert np.array_equal(decoded(png), pixels(image))

    # re-running replaces: same material, one image, no stacked nodes
    counts = (len(bpy.data.materials), len(bpy.data.images), len(tree.nodes))
    assert bpy.ops.aigc.texture_from_shape(mode="BLOCKING") == {"FINISHED"}
    assert cube.active_material == material
    assert (len(bpy.data.materials), len(bpy.data.images), len(material.node_tree.nodes)) == counts


def test_cancel_mid_loop_leaves_the_previous_material(shape_scene) -> None:
    runner = shape_scene.runner
    cube = brick_cube()
    bpy.context.scene.aigc.shape_views = 24  # long enough to still be running when the cancel lands
    images = len(bpy.data.images)
    assert bpy.ops.aigc.texture_from_shape(mode="TIMER") == {"FINISHED"}
    run = runner.STATE.run
    pump(runner, until=lambda: run.progress is not None and run.progress.step >= 1)
    assert bpy.ops.aigc.cancel() == {"FINISHED"}
    pump(runner, timeout=30)
    assert run.task.job.error is not None and run.task.job.error.code == "cancelled"
    assert runner.STATE.info == "Cancelled." and runner.STATE.error is None
    assert cube.active_material.name == "Old" and len(bpy.data.images) == images


def test_bad_input_is_refused_and_the_scene_is_unchanged(shape_scene) -> None:
    runner = shape_scene.runner
    bpy.ops.mesh.primitive_cylinder_add(calc_uvs=False)
    barrel = bpy.context.object
    bpy.ops.object.camera_add(location=(0, -5, 0))
    camera = bpy.context.object
    for obj in (barrel, camera):
        obj.select_set(True)
    with pytest.raises(RuntimeError, match="is a camera, not a mesh"):
        bpy.ops.aigc.texture_from_shape(mode="BLOCKING")
    assert not barrel.data.uv_layers and not barrel.material_slots  # checked before anything changed

    # a camera inside the object: refused by the sidecar before it queues anything
    camera.select_set(False)
    camera.location = (0, 0, 0)
    bpy.context.scene.aigc.shape_cameras = "SCENE"
    bpy.ops.mesh.primitive_cube_add(location=(0, 0, 0), size=3)
    box = bpy.context.object
    barrel.select_set(False)
    box.select_set(True)
    with pytest.raises(RuntimeError, match="is inside 'Cube'"):
        bpy.ops.aigc.texture_from_shape(mode="BLOCKING")
    assert not box.material_slots and runner.STATE.error.code == "invalid_request"


def test_zero_area_faces_are_dropped_with_a_warning(shape_scene) -> None:
    runner = shape_scene.runner
    corners = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    mesh = bpy.data.meshes.new("Wall")
    mesh.from_pydata(corners + [(0, 0, 0), (0.1, 0, 0), (0.2, 0, 0)], [], quads + [(8, 9, 10)])  # on a line
    cube = bpy.data.objects.new("Wall", mesh)
    bpy.context.scene.collection.objects.link(cube)
    cube["aigc_prompt"] = "red brick wall"
    cube.select_set(True)
    assert bpy.ops.aigc.texture_from_shape(mode="BLOCKING") == {"FINISHED"}
    assert runner.STATE.error is None
    info = runner.STATE.info
    assert "dropped 1 zero-area faces" in info and "had no UV map: made one with Smart UV Project" in info
    assert cube.active_material.get("aigc_generated")


def test_cycles_render_of_meshes_textured_from_their_shape(shape_scene, tmp_path) -> None:
    """A small Cycles (CPU) render of a bevelled crate and a sphere, each textured from its shape by the shipped
    texture-mini (a ring of 8 views and a top view). With AIGC_UPDATE_PREVIEW=1 it is also written to
    docs/images/texture-from-shape.png (the README's picture)."""
    import os
    import shutil

    from .conftest import REPO

    settings = bpy.context.scene.aigc
    settings.shape_views, settings.shape_bottom, settings.shape_texture_size = 8, False, "512"
    settings.object_template = "{subject}"
    bpy.ops.mesh.primitive_cube_add(location=(-1.3, 0, 1))
    crate = bpy.context.object
    crate.modifiers.new("Bevel", "BEVEL").width = 0.08
    crate["aigc_prompt"] = "red brick wall"
    bpy.ops.mesh.primitive_uv_sphere_add(location=(1.3, 0, 1))
    ball = bpy.context.object
    ball["aigc_prompt"] = "weathered blue wooden planks"
    bpy.ops.object.shade_smooth()
    for obj in (crate, ball):
        bpy.ops.object.select_all(action="DESELECT")
        obj.select_set(True)
        bpy.context.view_layer.objects.active = obj
        assert bpy.ops.aigc.texture_from_shape(mode="BLOCKING") == {"FINISHED"}
        assert obj.active_material.get("aigc_baked")
    bpy.ops.mesh.primitive_plane_add(size=20)
    scene = bpy.context.scene
    bpy.ops.object.camera_add(location=(0, -8.5, 3.6), rotation=(1.22, 0, 0))
    scene.camera = bpy.context.object
    bpy.ops.object.light_add(type="SUN", rotation=(0.7, 0.2, 0.5))
    bpy.context.object.data.energy = 3.0
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", 16, False
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 320, 200, 100
    scene.render.image_settings.file_format = "PNG"
    out = tmp_path / "texture-from-shape.png"
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)
    image = decoded(out.read_bytes(), "RGB")
    assert image.shape == (200, 320, 3) and image.std() > 5
    if os.environ.get("AIGC_UPDATE_PREVIEW") == "1":
        target = REPO / "docs" / "images" / "texture-from-shape.png"
        shutil.copyfile(out, target)
