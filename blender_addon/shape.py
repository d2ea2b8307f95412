"""Texture from Shape: the selection turned into one ``project`` request (aigc_bridge.project_request).

The evaluated meshes travel as arrays (mesh_arrays, ``foreach_get``), the views as a ring the sidecar places
around them or as the scene's own cameras. Everything that can be refused here is refused before the scene
changes (not a mesh, too many triangles, no camera); only then do objects without UVs get a Smart UV Project.
The sidecar checks the geometry (zero-area faces, cameras inside objects) before it queues anything.
"""

from __future__ import annotations

import random

import bpy
import numpy as np

from aigc_bridge.project_request import (
    MAX_TRIANGLES,
    ArrayInput,
    CameraInput,
    MeshInput,
    ProjectRequest,
    ViewsInput,
)
from aigc_bridge.prompts import compose_object_prompt

from . import mesh_arrays, scene_data
from .mesh_arrays import MeshRefused
from .plans import SHAPE, Task

SIZE_STEP = 8  # scene-camera views: the height follows the scene's aspect, rounded to a multiple of this


def to_mesh_input(arrays: mesh_arrays.MeshArrays) -> MeshInput:
    def wrap(a: np.ndarray, dtype: str) -> ArrayInput:
        a = np.ascontiguousarray(a, dtype)
        return ArrayInput(dtype, a.shape, a.tobytes())

    return MeshInput(arrays.name, wrap(arrays.positions, "float32"), wrap(arrays.triangles, "int32"),
                     wrap(arrays.uvs, "float32"))


def scene_cameras(scene: bpy.types.Scene, size: int) -> tuple[CameraInput, ...]:
    """The scene's cameras (name order), each ``size`` pixels wide at the scene's aspect."""
    cameras = sorted((o for o in scene.objects if o.type == "CAMERA"), key=lambda o: o.name)
    if not cameras:
        raise MeshRefused("no_camera", "The scene has no camera to texture from.",
                          "Add a camera, or set Views to Ring", "shape_cameras")
    r = scene.render
    aspect = (r.resolution_y * r.pixel_aspect_y) / (r.resolution_x * r.pixel_aspect_x)
    height = max(16, min(2048, round(size * aspect / SIZE_STEP) * SIZE_STEP))
    out = []
    for cam in cameras:
        c = mesh_arrays.camera_arrays(cam, scene, size, height)
        out.append(CameraInput(tuple(float(v) for v in np.asarray(c["world_to_camera"]).reshape(-1)), c["width"],
                               c["height"], c["fx"], c["fy"], c["cx"], c["cy"], c["projection"], c["name"]))
    return tuple(out)


def shape_task(scene: bpy.types.Scene, objects: list[bpy.types.Object],
               depsgraph: bpy.types.Depsgraph | None = None) -> Task:
    """Check the selection, read the meshes and build the task (raises MeshRefused with what to do)."""
    settings = scene.aigc
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    mesh_arrays.check_objects(objects, depsgraph, MAX_TRIANGLES)
    total = sum(mesh_arrays.triangle_count(o, depsgraph) for o in objects)
    if total > MAX_TRIANGLES:
        raise MeshRefused("mesh_too_large", f"The selected objects have {total:,} triangles together (modifiers "
                          f"applied); at most {MAX_TRIANGLES:,} can be textured at once.",
                          "Texture fewer objects at a time, or decimate them", "objects")
    cameras = scene_cameras(scene, settings.shape_view_size) if settings.shape_cameras == "SCENE" else ()
    description = scene_data.describe_scene(scene, objects)
    prompt = compose_object_prompt(description, description["objects"][0], settings.object_template)
    arrays, notes = mesh_arrays.extract(objects, depsgraph=depsgraph, max_triangles=MAX_TRIANGLES)
    seed = settings.seed if settings.seed_mode == "FIXED" else random.randrange(0, 2**31)
    views = None if cameras else ViewsInput(settings.shape_views, settings.shape_elevation, settings.shape_top,
                                            settings.shape_bottom, settings.shape_view_size)
    request = ProjectRequest(prompt, tuple(to_mesh_input(a) for a in arrays),
                             negative_prompt=settings.negative_prompt, seed=seed, steps=settings.steps or None,
                             texture_size=int(settings.shape_texture_size),
                             control_scale=settings.shape_control_scale, views=views, cameras=cameras)
    label = objects[0].name if len(objects) == 1 else f"{len(objects)} objects"
    return Task(SHAPE, label, prompt, {"request": request, "uv_maps": {a.name: a.uv_map for a in arrays},
                                       "notes": notes})
