"""The output files load in Blender (bpy 5.0 as a module) with the right colour spaces and pixels, and
both GLBs (a PBR plane, the skydome) come back through Blender's glTF importer with their textures.

Blender runs once, in a subprocess with its user folders and Mesa's shader cache in a temporary folder
(shared/notes/blender.md); it reports what it saw as JSON and .npy files, and the asserts run here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigc_bridge.assets.outputs import write_outputs
from aigc_bridge.assets.panorama import CUBE_FACES, cube_face_directions, sample_equirect

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy is not installed")

BLENDER_SCRIPT = r'''
import json, os, sys
import numpy as np
import bpy
from aigc_bridge.assets.colour import BLENDER_COLOUR_SPACES

folder, out = sys.argv[1], sys.argv[2]
report = {"images": {}, "glb": {}}

def pixels(img):
    w, h = img.size
    buf = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(buf)
    return buf.reshape(h, w, 4)[::-1]  # Blender stores the bottom row first

for doc_name in sorted(n for n in os.listdir(folder) if n.endswith(".json")):
    doc = json.load(open(os.path.join(folder, doc_name)))
    for entry in doc["files"]:
        if entry["mime"] not in ("image/png", "image/x-exr"):
            continue
        img = bpy.data.images.load(os.path.join(folder, entry["filename"]))
        default = img.colorspace_settings.name
        img.colorspace_settings.name = BLENDER_COLOUR_SPACES[entry["colour_space"]]  # before reading pixels
        np.save(os.path.join(out, entry["filename"] + ".npy"), pixels(img))
        report["images"][entry["filename"]] = {
            "default": default, "colour_space": img.colorspace_settings.name,
            "is_data": img.colorspace_settings.is_data, "is_float": img.is_float, "size": list(img.size)}

for glb in sorted(n for n in os.listdir(folder) if n.endswith(".glb")):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    result = bpy.ops.import_scene.gltf(filepath=os.path.join(folder, glb))
    objects = [o for o in bpy.data.objects if o.type == "MESH"]
    mesh = objects[0].data
    verts = np.array([v.co[:] for v in mesh.vertices])
    inward = [p.normal.dot(p.center) < 0 for p in mesh.polygons]
    uv_layer = mesh.uv_layers.active.data
    uv_of = {}
    for loop in mesh.loops:
        uv_of.setdefault(loop.vertex_index, list(uv_layer[loop.index].uv))
    def uv_near(direction):
        d = np.array(direction, float)
        i = int(np.argmax(verts @ d / np.linalg.norm(verts, axis=1)))
        return uv_of[i]
    mats = {}
    for m in bpy.data.materials:
        mats[m.name] = {
            "nodes": sorted(n.bl_idname for n in m.node_tree.nodes),
            "links": sorted([l.from_node.bl_idname, l.from_socket.name, l.to_node.bl_idname, l.to_socket.name,
                             getattr(l.from_node, "image", None) and l.from_node.image.name or ""]
                            for l in m.node_tree.links)}
    images = {}
    for img in bpy.data.images:
        images[img.name] = {"colour_space": img.colorspace_settings.name, "packed": img.packed_file is not None,
                            "size": list(img.size), "mean_rgb": pixels(img)[..., :3].mean(axis=(0, 1)).tolist()}
    report["glb"][glb] = {"result": sorted(result), "objects": len(objects), "polygons": len(mesh.polygons),
                          "inward": sum(inward), "materials": mats, "images": images,
                          "uv_forward": uv_near((0, 1, 0)), "uv_right": uv_near((1, 0, 0)),
                          "uv_up": uv_near((0, 0, 1)), "radius": float(np.linalg.norm(verts, axis=1).max())}

json.dump(report, open(os.path.join(out, "report.json"), "w"))
'''


def tileable(size: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f_y, f_x = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(width)[None, :]
    gain = np.exp(-(f_x**2 + f_y**2) * (size / 6) ** 2)[..., None]
    noise = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, width, 3)), axes=(0, 1)) * gain, axes=(0, 1)))
    return np.clip((noise - noise.mean()) / (noise.std() * 6) + 0.5, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def blender(tmp_path_factory):
    pytest.importorskip("OpenEXR")
    folder, out, home = (tmp_path_factory.mktemp(n) for n in ("files", "seen", "blender-home"))
    wall, sky = tileable(64, 64, 1), tileable(32, 64, 2)
    meta = {"prompt": "test", "seed": 1, "tile": "both"}
    write_outputs(wall, meta, folder / "w8.png", pbr=True)
    write_outputs(wall, meta, folder / "w16.png", pbr=True, bit_depth=16, exr=True)
    write_outputs(sky, {**meta, "tile": "x"}, folder / "sky.png", kind="backdrop", exr=True, target_size=128)
    env = {"BLENDER_USER_RESOURCES": str(home / "user"), "MESA_SHADER_CACHE_DIR": str(home / "mesa"),
           "PATH": "/usr/bin:/bin", "HOME": str(home)}
    run = subprocess.run([sys.executable, "-c", BLENDER_SCRIPT, str(folder), str(out)], capture_output=True,
                         text=True, timeout=240, env=env, cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    return folder, out, json.loads((out / "report.json").read_text())


def seen(out: Path, name: str) -> np.ndarray:
    return np.load(out / f"{name}.npy")


def raw8(folder: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(folder / name)).astype(np.float32) / 255.0


def test_colour_spaces_in_blender(blender):
    _, _, report = blender
    images = report["images"]
    assert len(images) == 6 + 7 + 8  # 8-bit set; 16-bit set + EXR colour + EXR height; backdrop PNG, EXR, faces
    for name, info in images.items():
        if name.endswith(("_normal.png", "_roughness.png", "_height.png", "_height.exr", "_ao.png", "_orm.png")):
            assert info["colour_space"] == "Non-Color" and info["is_data"], name
        elif name.endswith(".exr"):
            assert info["colour_space"] == info["default"] == "Linear Rec.709" and info["is_float"], name
        else:
            assert info["colour_space"] == info["default"] == "sRGB" and not info["is_data"], name
    assert images["sky.exr"]["size"] == [128, 64] and images["sky_px.exr"]["size"] == [32, 32]


def test_data_maps_reach_blender_unchanged(blender):
    folder, out, _ = blender
    for name in ("w8_normal.png", "w8_orm.png"):  # 8-bit RGB data: the file's values, not decoded as sRGB
        assert np.abs(seen(out, name)[..., :3] - raw8(folder, name)).max() < 1e-6, name
    for name in ("w8_roughness.png", "w8_ao.png"):  # grey: one channel seen as R = G = B
        assert np.abs(seen(out, name)[..., :3] - raw8(folder, name)[..., None]).max() < 1e-6, name
    height16 = np.asarray(Image.open(folder / "w8_height.png")).astype(np.float32) / 65535.0
    assert np.abs(seen(out, "w8_height.png")[..., 0] - height16).max() < 2e-5
    assert np.abs(seen(out, "w16_height.exr")[..., 0] - height16).max() < 2e-5  # float32 EXR, same map
    for name in ("normal", "orm"):  # the 16-bit PNG holds the 8-bit one's values to within half a step
        diff = seen(out, f"w16_{name}.png")[..., :3] - raw8(folder, f"w8_{name}.png")
        assert np.abs(diff).max() <= 0.5 / 255 + 1e-4, name


def test_srgb_png_and_linear_exr_agree_in_blender(blender):
    folder, out, _ = blender
    assert np.abs(seen(out, "w8.png")[..., :3] - raw8(folder, "w8.png")).max() < 1e-6  # byte image: raw values
    # a 16-bit sRGB PNG is decoded to linear floats; the EXR holds linear (half) floats: the same light
    assert np.abs(seen(out, "w16.png")[..., :3] - seen(out, "w16.exr")[..., :3]).max() < 2e-3
    # each face, as Blender reads it, is the equirect EXR (as Blender reads it) seen in the face's directions
    sky = seen(out, "sky.exr")[..., :3]
    step = np.abs(np.diff(sky, axis=1)).mean()
    for face in CUBE_FACES:
        expected = sample_equirect(sky, cube_face_directions(face, 32))
        assert np.abs(seen(out, f"sky_{face}.exr")[..., :3] - expected).mean() < 0.1 * step, face


def test_the_pbr_plane_glb_imports_with_its_textures_wired(blender):
    folder, _, report = blender
    glb = report["glb"]["w8_material.glb"]
    assert glb["result"] == ["FINISHED"] and glb["objects"] == 1 and glb["polygons"] == 2
    links = glb["materials"]["w8"]["links"]
    wired = {(link[0], link[1], link[2], link[3]) for link in links}
    assert ("ShaderNodeTexImage", "Color", "ShaderNodeBsdfPrincipled", "Base Color") in wired
    assert ("ShaderNodeTexImage", "Color", "ShaderNodeNormalMap", "Color") in wired
    assert ("ShaderNodeSeparateColor", "Green", "ShaderNodeBsdfPrincipled", "Roughness") in wired
    assert ("ShaderNodeSeparateColor", "Blue", "ShaderNodeBsdfPrincipled", "Metallic") in wired
    assert any(link[1] == "Red" and link[3] == "Occlusion" for link in links)  # glTF settings group
    images = glb["images"]
    assert images["w8_base_color"]["colour_space"] == "sRGB"
    assert images["w8_normal"]["colour_space"] == images["w8_orm"]["colour_space"] == "Non-Color"
    assert all(i["packed"] and i["size"] == [64, 64] for i in images.values())
    assert np.allclose(images["w8_base_color"]["mean_rgb"], raw8(folder, "w8.png").mean(axis=(0, 1)), atol=1e-4)
    assert np.allclose(images["w8_orm"]["mean_rgb"], raw8(folder, "w8_orm.png").mean(axis=(0, 1)), atol=1e-4)


def test_the_skydome_glb_imports_inward_and_unlit_with_its_texture(blender):
    folder, _, report = blender
    glb = report["glb"]["sky_skydome.glb"]
    assert glb["result"] == ["FINISHED"] and glb["objects"] == 1
    assert glb["inward"] == glb["polygons"] > 0  # every face is seen from inside
    assert abs(glb["radius"] - 50.0) < 1e-3
    material = glb["materials"]["sky"]
    assert "ShaderNodeEmission" in material["nodes"]  # the importer's unlit set-up: emission, no BSDF
    assert not any("Bsdf" in n and "Transparent" not in n for n in material["nodes"])
    image = glb["images"]["sky_equirect"]
    assert image["packed"] and image["size"] == [128, 64] and image["colour_space"] == "sRGB"
    assert np.allclose(image["mean_rgb"], raw8(folder, "sky.png").mean(axis=(0, 1)), atol=1e-4)
    # glTF -Z (Blender +Y) is the panorama's centre, +X its right quarter, up its top row (Blender v = 1 - v)
    assert np.allclose(glb["uv_forward"], (0.5, 0.5), atol=1e-3)
    assert abs(glb["uv_right"][0] - 0.75) < 1e-3 and abs(glb["uv_up"][1] - 1.0) < 1e-3
