"""Objects and cameras as the arrays "Texture from Shape" sends to the sidecar (aigc_bridge.projection).

A mesh is its evaluated form (modifiers applied, what renders), in world space, triangulated, with the
active UV map per triangle corner, read with ``foreach_get`` into numpy (no Python loop per vertex). An
object without UVs gets a Smart UV Project first, and the report says so. Every object is checked before
anything in the scene changes, so a refused selection (not a mesh, too many triangles) leaves it as it was.

bpy, numpy (Blender ships it) and the add-on's bpy-only modules; no add-on state and no UI, like
scene_import, so the batch can use it headless.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from .messages import UserMessage
from .scene_import import ensure_uvs


class MeshRefused(Exception):
    """An object the projection cannot take; ``user_message`` is what the panel shows."""

    def __init__(self, code: str, text: str, fix: str, field: str) -> None:
        super().__init__(text)
        self.code, self.message, self.field = code, text, field
        self.user_message = UserMessage(text, fix, code)


@dataclass
class MeshArrays:
    """One object as the projection core takes it (``aigc_bridge.projection.mesh.Mesh.checked``)."""

    name: str
    positions: np.ndarray  # (V, 3) float32, world space
    triangles: np.ndarray  # (T, 3) int32 into positions
    uvs: np.ndarray        # (T, 3, 2) float32, per triangle corner, from ``uv_map``
    uv_map: str
    made_uvs: bool = False  # the object had no UV map: Smart UV Project made one


def triangle_count(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> int:
    """Triangles of the evaluated mesh (each n-gon makes n - 2), without triangulating it."""
    mesh = obj.evaluated_get(depsgraph).data  # the evaluated mesh itself: read without a copy
    sizes = np.empty(len(mesh.polygons), np.int32)
    mesh.polygons.foreach_get("loop_total", sizes)
    return int((sizes - 2).sum())


def check_objects(objects: list[bpy.types.Object], depsgraph: bpy.types.Depsgraph,
                  max_triangles: int | None = None) -> None:
    """Refuse what cannot be projected, naming the object: not a mesh, an empty mesh, too many triangles."""
    if not objects:
        raise MeshRefused("nothing_selected", "No object is selected.",
                          "Select one or more mesh objects in the 3D View", "objects")
    for obj in objects:
        if obj.type != "MESH":
            raise MeshRefused("not_a_mesh", f"{obj.name!r} is a {obj.type.lower()}, not a mesh: only meshes can "
                              "be textured from their shape.",
                              f"Deselect {obj.name!r}, or convert it (Object > Convert > Mesh)", obj.name)
        count = triangle_count(obj, depsgraph)
        if count == 0:
            raise MeshRefused("empty_mesh", f"{obj.name!r} has no faces to texture.",
                              f"Deselect {obj.name!r}", obj.name)
        if max_triangles is not None and count > max_triangles:
            raise MeshRefused("mesh_too_large", f"{obj.name!r} has {count:,} triangles (modifiers applied); "
                              f"at most {max_triangles:,} can be textured from their shape.",
                              "Lower its Subdivision levels or add a Decimate modifier", obj.name)


def mesh_arrays(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph, *, made_uvs: bool = False) -> MeshArrays:
    """The evaluated mesh of ``obj`` (it must have a UV map) as world-space arrays."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        uv_layer = mesh.uv_layers.get(obj.data.uv_layers.active.name) or mesh.uv_layers.active
        mesh.calc_loop_triangles()
        n_verts, n_tris, n_loops = len(mesh.vertices), len(mesh.loop_triangles), len(mesh.loops)
        positions = np.empty(n_verts * 3, np.float32)
        mesh.vertices.foreach_get("co", positions)
        triangles = np.empty(n_tris * 3, np.int32)
        mesh.loop_triangles.foreach_get("vertices", triangles)
        loops = np.empty(n_tris * 3, np.int32)
        mesh.loop_triangles.foreach_get("loops", loops)
        loop_uvs = np.empty(n_loops * 2, np.float32)
        uv_layer.data.foreach_get("uv", loop_uvs)
        name = uv_layer.name
    finally:
        evaluated.to_mesh_clear()
    matrix = np.array(evaluated.matrix_world, np.float64)
    world = positions.reshape(-1, 3).astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    uvs = loop_uvs.reshape(-1, 2)[loops].reshape(n_tris, 3, 2)
    return MeshArrays(obj.name, world.astype(np.float32), triangles.reshape(n_tris, 3), uvs, name, made_uvs)


def extract(objects: list[bpy.types.Object], *, depsgraph: bpy.types.Depsgraph | None = None,
            max_triangles: int | None = None) -> tuple[list[MeshArrays], list[str]]:
    """Check every object, give those without UVs a Smart UV Project, then read them all. Returns the
    arrays and the report lines (one per object that got new UVs)."""
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    check_objects(objects, depsgraph, max_triangles)
    made = {obj.name: ensure_uvs(obj) for obj in objects}
    report = [f"{name!r} had no UV map: made one with Smart UV Project (UVMap)" for name, did in made.items() if did]
    if any(made.values()):
        depsgraph.update()  # the evaluated meshes must see the new UV maps
    return [mesh_arrays(obj, depsgraph, made_uvs=made[obj.name]) for obj in objects], report


def camera_arrays(obj: bpy.types.Object, scene: bpy.types.Scene, width: int, height: int) -> dict:
    """A scene camera as the projection's camera (``aigc_bridge.projection.cameras.Camera`` fields) for a
    ``width`` x ``height`` view of exactly its frame (sensor fit, lens shift and the scene's aspect, as
    ``view_frame`` gives them); fx and fy differ when width / height is not the scene's aspect."""
    if obj.type != "CAMERA":
        raise MeshRefused("not_a_camera", f"{obj.name!r} is not a camera.", "Pick a camera object", obj.name)
    frame = [tuple(corner) for corner in obj.data.view_frame(scene=scene)]
    ortho = obj.data.type == "ORTHO"
    if obj.data.type not in ("PERSP", "ORTHO"):
        raise MeshRefused("unsupported_camera", f"{obj.name!r} is a panoramic camera: views need a perspective "
                          "or orthographic one.", "Set its Type to Perspective or Orthographic", obj.name)
    xs = [x if ortho else x / -z for x, _, z in frame]
    ys = [y if ortho else y / -z for _, y, z in frame]
    fx, fy = width / (max(xs) - min(xs)), height / (max(ys) - min(ys))
    world_to_camera = np.array(obj.matrix_world.normalized().inverted(), np.float64)
    return {"world_to_camera": world_to_camera, "width": width, "height": height, "fx": fx, "fy": fy,
            "cx": -min(xs) * fx, "cy": max(ys) * fy, "projection": "orthographic" if ortho else "perspective",
            "name": obj.name}
