"""Restyle and Make Tileable in real Blender (bpy 5.0 in this process) against a real sidecar with the shipped
texture-mini: the operators return at once and the timer function (called in a loop, as Blender would) brings the
result in; the original image is kept, a re-run replaces our previous result, and the pixels are what the sidecar
made."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from aigc_bridge.assets.seams import seam_ratio

from .test_blender_addon import Recorder, addon, decoded, draw, fresh_file, mini, pixels, pump  # noqa: F401

bpy = pytest.importorskip("bpy")


@pytest.fixture
def scene(addon, mini):  # noqa: F811
    with fresh_file(addon, mini, 5.0) as settings:
        settings.texture_size = "NATIVE"
        settings.seed_mode, settings.seed = "FIXED", 3
        yield addon


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def packed_image(name: str, data: bytes) -> bpy.types.Image:
    image = bpy.data.images.new(name, 1, 1)
    image.pack(data=data, data_len=len(data))
    image.source = "FILE"
    return image


def red_bricks(sidecar) -> bytes:
    with sidecar.client(timeout=30) as client:
        return client.generate("red brick wall", seed=7, steps=20).images[0].data


def blueness(rgb: np.ndarray) -> float:
    rgb = rgb.astype(np.int16)
    return float((rgb[..., 2] - rgb[..., 0]).mean())


def test_restyle_swaps_in_a_restyled_image_and_a_rerun_replaces_it(scene, mini) -> None:  # noqa: F811
    runner = scene.runner
    original = packed_image("bricks.png", red_bricks(mini))
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.object
    cube["aigc_prompt"] = "blue glazed tiles"
    material = bpy.data.materials.new("Wall")
    node = material.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = original
    bsdf = material.node_tree.nodes["Principled BSDF"]
    material.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    cube.data.materials.append(material)
    assert ("operator", "aigc.restyle", "Restyle") in draw(scene)  # offered: the object has an image texture

    settings = bpy.context.scene.aigc
    results = {}
    for strength in (0.2, 0.8):
        settings.restyle_strength = strength
        assert bpy.ops.aigc.restyle(mode="TIMER") == {"FINISHED"}
        assert runner.busy()  # returned at once; the timer brings the result in
        pump(runner)
        assert runner.STATE.error is None, runner.STATE.error
        restyled = node.image
        assert restyled is not original and restyled.name == "bricks.png restyled"
        assert restyled["aigc_restyled_from"] == "bricks.png" and restyled["aigc_prompt"].startswith("blue")
        results[strength] = pixels(restyled)[..., :3]
    assert original.name in bpy.data.images  # the original is kept
    assert [i.name for i in bpy.data.images if i.get("aigc_restyled_from")] == ["bricks.png restyled"]  # replaced
    before = decoded(bytes(original.packed_file.data), "RGB")
    assert blueness(before) < blueness(results[0.2]) < blueness(results[0.8])


def test_restyle_without_an_image_texture_says_what_to_do(scene) -> None:
    bpy.ops.mesh.primitive_cube_add()
    with pytest.raises(RuntimeError, match="has no image texture to restyle"):
        bpy.ops.aigc.restyle(mode="BLOCKING")
    assert scene.runner.STATE.error.code == "no_image_texture"
    assert not scene.runner.busy()


def test_make_tileable_makes_a_seamless_copy_the_size_of_the_image(scene, mini) -> None:  # noqa: F811
    runner = scene.runner
    with mini.client(timeout=30) as client:
        photo = client.generate("grey stone floor", seed=6, tile="none", steps=20).images[0].data
    big = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB").resize((64, 48), Image.LANCZOS))
    source = packed_image("floor.png", png(big))
    settings = bpy.context.scene.aigc
    settings.image_prompt = "grey stone floor"
    assert bpy.ops.aigc.make_tileable(mode="TIMER", image=source.name) == {"FINISHED"}
    pump(runner)
    assert runner.STATE.error is None, runner.STATE.error
    tileable = bpy.data.images["floor.png tileable"]
    assert tuple(tileable.size) == (64, 48) and tileable["aigc_tileable_from"] == "floor.png"
    out = pixels(tileable)[..., :3]
    before = np.mean([seam_ratio(big / 255.0, axis) for axis in (0, 1)])
    after = np.mean([seam_ratio(out / 255.0, axis) for axis in (0, 1)])
    assert before > 5 and after < 1.5, (before, after)
    np.testing.assert_array_equal(out[14:34, 20:44], big[14:34, 20:44])  # outside the band: the image's own

    assert bpy.ops.aigc.make_tileable(mode="BLOCKING", image=source.name) == {"FINISHED"}  # again: replaced
    assert [i.name for i in bpy.data.images if i.get("aigc_tileable_from")] == ["floor.png tileable"]


def test_make_tileable_with_no_image(scene) -> None:
    from types import SimpleNamespace

    log: list = []
    scene.panel.IMAGE_PT_aigc.draw(SimpleNamespace(layout=Recorder(log)), bpy.context)  # the Image Editor's panel
    assert ("operator", "aigc.make_tileable", None) in log and ("prop", "tileable_band", None) in log
    with pytest.raises(RuntimeError, match="No image to make tileable"):
        bpy.ops.aigc.make_tileable(mode="BLOCKING")
    assert not scene.runner.busy()
