"""bpy scene -> the plain scene description that aigc_bridge.prompts composes prompts from.

Read-only and free of add-on state (the scene settings are read when the add-on registered them), so the
batch runner can describe a .blend the same way the panel does.
"""

from __future__ import annotations

import bpy

from .scene_import import GENERATED, SOURCE_MATERIAL

PROMPT_PROPERTY = "aigc_prompt"  # the per-object description: a plain custom property, editable anywhere


def object_prompt(obj: bpy.types.Object) -> str:
    value = obj.get(PROMPT_PROPERTY, "")
    return value if isinstance(value, str) else ""


def material_name(obj: bpy.types.Object) -> str:
    """The first material's name; for a material we generated, the user's material it replaced (so a
    second run composes the same prompt as the first, not "aigc crate")."""
    for slot in obj.material_slots:
        material = slot.material
        if material is not None:
            if material.get(GENERATED):
                source = material.get(SOURCE_MATERIAL, "")
                return source if isinstance(source, str) else ""
            return material.name
    return ""


def collection_name(obj: bpy.types.Object, scene: bpy.types.Scene | None = None) -> str:
    """The first collection the object is in, other than the scene's master collection."""
    master = scene.collection if scene is not None else None
    for collection in obj.users_collection:
        if collection != master and not (master is None and collection.name == "Scene Collection"):
            return collection.name
    return ""


def describe_object(obj: bpy.types.Object, scene: bpy.types.Scene | None = None) -> dict:
    return {"name": obj.name, "material": material_name(obj), "collection": collection_name(obj, scene),
            "prompt": object_prompt(obj)}


def describe_scene(scene: bpy.types.Scene, objects: list[bpy.types.Object] | None = None) -> dict:
    """The scene description of ``objects`` (default: none) with the scene's style and world text."""
    settings = getattr(scene, "aigc", None)
    return {"style": getattr(settings, "style", "") if settings else "",
            "world": getattr(settings, "world_description", "") if settings else "",
            "objects": [describe_object(o, scene) for o in objects or []]}
