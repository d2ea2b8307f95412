"""`batch --blend scene.blend --export-glb out.glb`: the add-on's own import code puts each job's first image
on its object (or on every object using its material) and the backdrop into the World of a COPY of the
.blend in --out; the GLB carries the textures and the skydome and loads back in Blender. Targets are
checked before anything is generated."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO, cli

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy is not installed"),
    pytest.mark.skipif(not (REPO / "blender_addon" / "scene_import.py").is_file(),
                       reason="the add-on's scene_import.py is not there"),
]

MAKE_SCENE = r'''
import sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_plane_add(size=2)
bpy.context.object.name = "Wall"
bpy.ops.mesh.primitive_cube_add(location=(3, 0, 0))
bpy.context.object.name = "Crate"
stone = bpy.data.materials.new("Stone")
for i in range(2):
    bpy.ops.mesh.primitive_cube_add(location=(0, 3 * (i + 1), 0))
    bpy.context.object.name = f"Quay{i}"
    bpy.context.object.data.materials.append(stone)
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
'''

READ_BACK = r'''
import json, sys
import numpy as np
import bpy
glb, blend, out = sys.argv[1:4]
report = {"glb": {}, "blend": {}}
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=glb)
for obj in bpy.data.objects:
    textures = {}
    for slot in obj.material_slots:
        for node in slot.material.node_tree.nodes:
            if node.bl_idname == "ShaderNodeTexImage" and node.image is not None:
                socket = node.outputs["Color"].links[0].to_socket.name if node.outputs["Color"].links else ""
                w, h = node.image.size
                pixels = np.empty(w * h * 4, np.float32)
                node.image.pixels.foreach_get(pixels)
                np.save(f"{out}/{obj.name}-{socket.replace(' ', '_')}.npy", pixels.reshape(h, w, 4)[::-1])
                textures[socket] = [w, h]
    report["glb"][obj.name] = {"type": obj.type, "textures": textures}
bpy.ops.wm.open_mainfile(filepath=blend)
world = bpy.context.scene.world
env = [n for n in world.node_tree.nodes if n.bl_idname == "ShaderNodeTexEnvironment"]
report["blend"] = {"world": world.name, "environment": list(env[0].image.size) if env else None,
                   "prompt": world.get("aigc_prompt"),
                   "materials": {o.name: [s.material.name for s in o.material_slots if s.material]
                                 for o in bpy.data.objects}}
json.dump(report, open(f"{out}/report.json", "w"))
'''

JOBS = """\
[defaults]
steps = 3

[defaults.texture]
tile = "both"
pbr = true

[blend]
file = "scene.blend"

[[texture]]
name = "wall"
prompt = "red brick wall"
seeds = [11, 12]
object = "Wall"

[[texture]]
name = "stone"
prompt = "granite slabs"
material = "Stone"
seed = 3

[[texture]]
name = "crate"
object = "Crate"
seed = 5

[[backdrop]]
name = "sky"
prompt = "overcast sky"
world = true
seed = 8
"""


def blender_env(home: Path) -> dict:
    return {**os.environ, "BLENDER_USER_RESOURCES": str(home / "user"), "MESA_SHADER_CACHE_DIR": str(home / "mesa"),
            "HOME": str(home)}


def bpy_run(script: str, *args: str, env: dict) -> None:
    run = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=240,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blend")
    env = blender_env(tmp_path_factory.mktemp("blender-home"))
    bpy_run(MAKE_SCENE, str(folder / "scene.blend"), env=env)
    (folder / "jobs.toml").write_text(JOBS)
    return folder, env


@pytest.fixture(scope="module")
def exported(scene, tiny_sd):
    folder, env = scene
    digest = hashlib.sha256((folder / "scene.blend").read_bytes()).hexdigest()
    out, glb = folder / "out", folder / "out" / "scene.glb"
    run = subprocess.run([sys.executable, "-m", "aigc_bridge.cli", "batch", str(folder / "jobs.toml"), "--out",
                          str(out), "--model", str(tiny_sd), "--export-glb", str(glb)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout
    seen = folder / "seen"
    seen.mkdir()
    bpy_run(READ_BACK, str(glb), str(out / "scene.blend"), str(seen), env=env)
    return folder, out, seen, json.loads((seen / "report.json").read_text()), digest, run


def test_the_users_blend_is_untouched_and_a_copy_is_in_out(exported):
    folder, out, _, report, digest, run = exported
    assert hashlib.sha256((folder / "scene.blend").read_bytes()).hexdigest() == digest
    assert (out / "scene.blend").is_file() and not list(out.glob("*.blend1"))
    materials = report["blend"]["materials"]
    assert materials["Wall"] == ["AIGC Wall"] and materials["Crate"] == ["AIGC Crate"]
    assert materials["Quay0"] == ["AIGC Quay0"] and materials["Quay1"] == ["AIGC Quay1"]  # by material
    assert report["blend"]["environment"] == [128, 64] and report["blend"]["prompt"] == "overcast sky"
    manifest = json.loads((out / "batch-manifest.json").read_text())
    assert manifest["blend"]["copy"] == str((out / "scene.blend").resolve()) and not manifest["blend"]["problems"]
    assert "blend copy:" in run.stdout


def test_the_glb_carries_the_textures_and_the_skydome(exported):
    _, out, seen, report, _, _ = exported
    glb = report["glb"]
    for name in ("Wall", "Crate", "Quay0", "Quay1"):
        assert glb[name]["type"] == "MESH"
        assert {"Base Color", "Color"} <= set(glb[name]["textures"]), glb[name]  # albedo, normal/roughness maps
    domes = [info for name, info in glb.items() if name.startswith("sky")]
    assert len(domes) == 1 and domes[0]["textures"]
    # the first seed's albedo, byte for byte, on the object it targets
    albedo = np.load(seen / "Wall-Base_Color.npy")[..., :3]
    expected = np.asarray(Image.open(out / "wall-1.png").convert("RGB")).astype(np.float32) / 255.0
    assert np.abs(albedo - expected).max() < 1e-3


def test_targets_missing_from_the_blend_are_reported_before_generating(scene, tiny_sd, tmp_path):
    folder, env = scene
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[blend]\nfile = "{folder / "scene.blend"}"\n\n[[texture]]\nname = "w"\nprompt = "x"\n'
                    'object = "Wal"\n\n[[texture]]\nname = "m"\nprompt = "y"\nmaterial = "Granite"\n')
    out = tmp_path / "out"
    run = cli("batch", str(jobs), "--out", str(out), "--model", str(tiny_sd), env=env)
    assert run.returncode == 2
    assert "has no object 'Wal' (did you mean 'Wall'?)" in run.stderr and "no material 'Granite'" in run.stderr
    assert not out.exists()
