"""Batch [[project]] jobs end to end: `aigc-bridge batch` with the shipped texture-mini textures objects of a
.blend from their shape (Blender reads the evaluated meshes, the loop runs on the local engine), writes the
textures, applies them to a copy of the .blend inside --out (the source is untouched) and exports a GLB."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO
from .test_batch_blend import blender_env, bpy_run

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy is not installed"),
    pytest.mark.skipif(not (REPO / "blender_addon" / "scene_import.py").is_file(),
                       reason="the add-on's scene_import.py is not there"),
]

MAKE_SCENE = r'''
import sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_cube_add()
bpy.context.object.name = "Crate"
bpy.context.object.modifiers.new("Bevel", "BEVEL").width = 0.1
bpy.ops.mesh.primitive_cylinder_add(calc_uvs=False, location=(3, 0, 0))
bpy.context.object.name = "Barrel"
bpy.ops.object.light_add(type="SUN")
bpy.context.object.name = "Sun"
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
'''

READ_BACK = r'''
import json, sys
import bpy
blend, glb, out = sys.argv[1:4]
report = {}
bpy.ops.wm.open_mainfile(filepath=blend)
for name in ("Crate", "Barrel"):
    obj = bpy.data.objects[name]
    m = obj.active_material
    nodes = m.node_tree.nodes
    image = nodes["AIGC albedo"].image
    report[name] = {"material": m.name, "uv_map": nodes["AIGC UV Map"].uv_map,
                    "uv_maps": [u.name for u in obj.data.uv_layers], "image": list(image.size),
                    "packed": image.packed_file is not None}
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=glb)
report["glb"] = {o.name: [n.image.size[0] for s in o.material_slots for n in s.material.node_tree.nodes
                          if n.bl_idname == "ShaderNodeTexImage"] for o in bpy.data.objects if o.type == "MESH"}
json.dump(report, open(out, "w"))
'''

JOBS = """\
[blend]
file = "scene.blend"

[[project]]
name = "props"
objects = ["Crate", "Barrel"]
prompt = "red brick wall"
views = 4
bottom = true
view_size = 64
texture_size = 128
seed = 2
glb = true
"""


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project-blend")
    env = blender_env(tmp_path_factory.mktemp("blender-home"))
    bpy_run(MAKE_SCENE, str(folder / "scene.blend"), env=env)
    (folder / "jobs.toml").write_text(JOBS)
    return folder, env


def batch(folder, env, jobs: str = "jobs.toml"):
    env = {**env, "AIGC_BRIDGE_SCENE_IMPORT": str(REPO / "blender_addon" / "scene_import.py")}  # this checkout's
    return subprocess.run([sys.executable, "-m", "aigc_bridge.cli", "batch", str(folder / jobs), "--out",
                           str(folder / "out")], capture_output=True, text=True, timeout=600, env=env)


def test_project_job_textures_a_copy_and_exports_glb(scene) -> None:
    folder, env = scene
    digest = hashlib.sha256((folder / "scene.blend").read_bytes()).hexdigest()
    run = batch(folder, env)
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout
    out = folder / "out"
    assert hashlib.sha256((folder / "scene.blend").read_bytes()).hexdigest() == digest  # the source untouched
    assert "project props: Crate" in run.stdout and "seen; copy" in run.stdout
    from PIL import Image

    for name in ("Crate", "Barrel"):
        texture = np.asarray(Image.open(out / "props" / f"{name}.png").convert("RGB"), np.float32) / 255
        assert texture.shape == (128, 128, 3)
        r, g, b = texture.reshape(-1, 3).mean(axis=0)
        assert r > g + 0.1 and r > b + 0.1, (name, r, g, b)
    assert {"props", "props.blend", "props.glb"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".project")]  # working files removed
    report_path = folder / "read.json"
    bpy_run(READ_BACK, str(out / "props.blend"), str(out / "props.glb"), str(report_path), env=env)
    report = json.loads(report_path.read_text())
    assert report["Crate"]["uv_map"] == "UVMap" and report["Crate"]["image"] == [128, 128]
    assert report["Barrel"]["uv_maps"] == ["UVMap"]  # made by Smart UV Project, kept in the copy
    assert report["Barrel"]["uv_map"] == "UVMap" and report["Barrel"]["packed"]
    assert report["glb"]["Crate"] == [128] and report["glb"]["Barrel"] == [128]


def test_bad_project_jobs_are_reported_before_anything_runs(scene) -> None:
    folder, env = scene
    (folder / "bad.toml").write_text(JOBS.replace('views = 4', 'views = 0\ntop = false')
                                     .replace('texture_size = 128', 'texture_size = 100'))
    run = batch(folder, env, "bad.toml")
    assert run.returncode != 0
    assert "texture_size must be a power of two" in run.stderr + run.stdout or "views" in run.stderr + run.stdout
    (folder / "sun.toml").write_text(JOBS.replace('["Crate", "Barrel"]', '["Crate", "Sun"]'))
    run = batch(folder, env, "sun.toml")  # refused before the model is loaded: nothing runs
    assert run.returncode != 0 and "'Sun' is a light, not a mesh" in run.stderr + run.stdout
    assert "nothing was generated" in run.stderr + run.stdout
    (folder / "typo.toml").write_text(JOBS.replace('["Crate", "Barrel"]', '["Crate", "Barel"]'))
    run = batch(folder, env, "typo.toml")
    assert "scene.blend has no object 'Barel'" in run.stderr + run.stdout and "Barrel" in run.stderr
