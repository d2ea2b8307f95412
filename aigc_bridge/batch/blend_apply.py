"""Runs inside Blender: put a batch's results into a copy of a .blend and export a GLB.

Standard library and bpy only (Blender's own Python need not have aigc-bridge installed); the "put this
texture on this object" code is the add-on's ``scene_import`` module, loaded from the path in the plan, so
the batch and the panel share one implementation. Two ways to run it::

    python blend_apply.py apply PLAN.json                          # bpy as a module (what `batch` does)
    blender -b --factory-startup --python-exit-code 1 --python blend_apply.py -- apply PLAN.json

A script, never imported by ``aigc_bridge.batch`` (it imports bpy at once, which the package must not).

``inspect`` lists the file's objects and materials (the batch checks its targets before generating);
``apply`` opens ``plan["source"]``, applies, saves ``plan["copy"]`` (never the source) and, with
``plan["glb"]``, exports the GLB, each through a temporary file renamed into place. Both write their report
as JSON to ``plan["report"]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import bpy


def _open(path: str) -> None:
    if os.path.abspath(bpy.data.filepath or "") != os.path.abspath(path):  # `blender -b FILE` opened it already
        bpy.ops.wm.open_mainfile(filepath=path, load_ui=False)


def _load_scene_import(path: str):
    spec = importlib.util.spec_from_file_location("aigc_scene_import", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inspect(plan: dict) -> dict:
    _open(plan["source"])
    objects = [{"name": o.name, "type": o.type,
                "materials": [s.material.name for s in o.material_slots if s.material is not None]}
               for o in bpy.data.objects]
    return {"scene": bpy.context.scene.name, "objects": objects,
            "materials": [m.name for m in bpy.data.materials]}


def _targets(entry: dict) -> list:
    if entry.get("object"):
        obj = bpy.data.objects.get(entry["object"])
        return [obj] if obj is not None else []
    name = entry.get("material")
    return [o for o in bpy.data.objects if o.type == "MESH"
            and any(s.material is not None and s.material.name == name for s in o.material_slots)]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _temporary(path: str) -> str:
    """A hidden name beside ``path`` that the batch removes if Blender dies before the rename."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.tmp-{os.getpid()}{ext}")


def apply(plan: dict) -> dict:
    scene_import = _load_scene_import(plan["scene_import"])
    _open(plan["source"])
    bpy.context.preferences.filepaths.save_version = 0  # no .blend1 beside the copy
    scene = bpy.context.scene
    applied, problems = [], []
    for entry in plan["textures"]:
        objects = _targets(entry)
        if not objects:
            what = f"object {entry['object']!r}" if entry.get("object") else f"material {entry['material']!r}"
            problems.append({"job": entry["job"], "message": f"{what} is not in the file"})
            continue
        maps = {role: _read(path) for role, path in entry["maps"].items()}
        for obj in objects:
            material = scene_import.apply_texture_set(obj, maps, entry.get("info"))
            applied.append({"job": entry["job"], "object": obj.name, "material": material.name})
    for entry in plan["backdrops"]:
        world = scene_import.set_world_backdrop(scene, _read(entry["image"]), entry.get("info"))
        applied.append({"job": entry["job"], "world": world.name})

    copy = plan["copy"]
    if os.path.abspath(copy) == os.path.abspath(plan["source"]):
        raise RuntimeError("refusing to overwrite the source .blend")
    tmp = _temporary(copy)
    bpy.ops.wm.save_as_mainfile(filepath=tmp, copy=True, check_existing=False)
    os.replace(tmp, copy)

    if plan.get("glb"):
        for entry in plan["backdrops"]:  # glTF has no World: the backdrop travels as its skydome
            if entry.get("skydome"):
                bpy.ops.import_scene.gltf(filepath=entry["skydome"])
        tmp = _temporary(plan["glb"])
        bpy.ops.export_scene.gltf(filepath=tmp, export_format="GLB", use_selection=False)
        os.replace(tmp, plan["glb"])
    return {"applied": applied, "problems": problems, "copy": copy, "glb": plan.get("glb")}


# --- project jobs: meshes out as arrays, baked textures back in (aigc_bridge.batch.project) ---------------


def _addon_module(addon_dir: str, name: str):
    """One module of the add-on (mesh_arrays, scene_import) as part of its package, without running the
    package's ``__init__`` (which registers UI and needs the client)."""
    import types

    package = "aigc_batch_addon"
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [addon_dir]
        sys.modules[package] = module
    return importlib.import_module(f"{package}.{name}")


def extract(plan: dict) -> dict:
    """Open the source, check and read ``plan["objects"]`` (evaluated, world space, with UVs: a Smart UV
    Project for those without), write the arrays as .npy files and save the working copy (``plan["copy"]``,
    inside --out) so the textures land on exactly the UV maps they were baked for."""
    import numpy as np

    mesh_arrays = _addon_module(plan["addon"], "mesh_arrays")
    _open(plan["source"])
    missing = [n for n in plan["objects"] if bpy.data.objects.get(n) is None]
    if missing:
        return {"problems": [f"object {n!r} is not in the file" for n in missing]}
    objects = [bpy.data.objects[n] for n in plan["objects"]]
    try:
        arrays, notes = mesh_arrays.extract(objects, max_triangles=plan.get("max_triangles"))
        cameras = [mesh_arrays.camera_arrays(o, bpy.context.scene, plan["view_size"],
                                             max(16, round(plan["view_size"] * bpy.context.scene.render.resolution_y
                                                           / bpy.context.scene.render.resolution_x / 8) * 8))
                   for o in sorted((o for o in bpy.context.scene.objects if o.type == "CAMERA"), key=lambda o: o.name)
                   ] if plan.get("scene_cameras") else []
    except mesh_arrays.MeshRefused as exc:
        return {"problems": [f"{exc.message} {exc.user_message.fix}."]}
    if plan.get("scene_cameras") and not cameras:
        return {"problems": ["the scene has no camera (cameras = \"scene\")"]}
    meshes = []
    for a in arrays:
        entry = {"name": a.name, "uv_map": a.uv_map, "made_uvs": a.made_uvs}
        for kind in ("positions", "triangles", "uvs"):
            path = os.path.join(plan["arrays"], f"{len(meshes)}.{kind}.npy")
            np.save(path, getattr(a, kind))
            entry[kind] = path
        meshes.append(entry)
    for c in cameras:
        c["world_to_camera"] = [float(v) for v in np.asarray(c["world_to_camera"]).reshape(-1)]
    _save_copy(plan)
    return {"meshes": meshes, "cameras": cameras, "notes": notes, "problems": []}


def bake_apply(plan: dict) -> dict:
    """Open the working copy, wire each baked texture into its object's material for the UV map it was
    baked for (the add-on's apply_baked_texture: replaces, never stacks), save it, export the GLB."""
    scene_import = _addon_module(plan["addon"], "scene_import")
    _open(plan["copy"])
    applied = []
    for entry in plan["textures"]:
        obj = bpy.data.objects[entry["object"]]
        material = scene_import.apply_baked_texture(obj, _read(entry["image"]), entry["uv_map"], entry.get("info"))
        applied.append({"object": obj.name, "material": material.name})
    _save_copy(plan)
    if plan.get("glb"):
        tmp = _temporary(plan["glb"])
        bpy.ops.export_scene.gltf(filepath=tmp, export_format="GLB", use_selection=False)
        os.replace(tmp, plan["glb"])
    return {"applied": applied, "copy": plan["copy"], "glb": plan.get("glb"), "problems": []}


def _save_copy(plan: dict) -> None:
    copy = plan["copy"]
    if os.path.abspath(copy) == os.path.abspath(plan["source"]):
        raise RuntimeError("refusing to overwrite the source .blend")
    bpy.context.preferences.filepaths.save_version = 0
    tmp = _temporary(copy)
    bpy.ops.wm.save_as_mainfile(filepath=tmp, copy=True, check_existing=False)
    os.replace(tmp, copy)


MODES = {"inspect": inspect, "apply": apply, "extract": extract, "bake_apply": bake_apply}


def main(argv: list[str]) -> int:
    args = argv[argv.index("--") + 1:] if "--" in argv else argv[1:]
    if len(args) != 2 or args[0] not in MODES:
        print(f"usage: blend_apply.py {'|'.join(MODES)} PLAN.json", file=sys.stderr)
        return 2
    with open(args[1], encoding="utf-8") as f:
        plan = json.load(f)
    report = MODES[args[0]](plan)
    with open(plan["report"], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
