"""Every generation, recorded in the .blend (``scene.aigc.history``): what was asked (the prompt and every
request field, with the seed the sidecar used), what the panel held (so Recall can put it back), the model
(id and hash), the target, and the image itself (packed, kept by the item even after a rerun replaced the
material's). Re-run sends the recorded request unchanged, so the same model gives the same pixels.

Reading and writing scene properties only; the operators in ``operators`` call these.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import bpy

from . import plans, scene_data, scene_import

MAX_ITEMS = 100  # the oldest go (with their images) beyond this: a .blend must not grow without bound


def record(scene: bpy.types.Scene, task: plans.Task, image_data: bytes, info: Mapping,
           backdrop_target: str = "WORLD") -> None:
    """Add one finished generation (newest last) and make it the active item. (Items move when the collection
    changes: nothing here keeps one across an add or remove.)"""
    settings = scene.aigc
    settings.history_counter += 1
    item = settings.history.add()
    seed = info.get("seed")
    item.number = settings.history_counter
    item.created = time.strftime("%Y-%m-%d %H:%M:%S")
    item.task_kind, item.target, item.backdrop_target = task.kind, task.target, backdrop_target
    item.prompt = info.get("prompt") or task.prompt
    item.negative_prompt = info.get("negative_prompt") or ""
    item.seed = "" if seed is None else str(seed)
    item.steps = int(info.get("steps") or 0)
    item.model, item.model_hash = info.get("model") or "", info.get("model_hash") or ""
    item.width, item.height = int(info.get("width") or 0), int(info.get("height") or 0)
    item.target_size = int(info.get("target_size") or 0)
    item.tile, item.kind = info.get("tile") or "", info.get("kind") or ""
    item.request = json.dumps({"prompt": task.prompt, "fields": {**task.fields, "seed": seed}})
    item.panel = task.snapshot or "{}"
    label = task.target if task.kind == plans.TEXTURE else "backdrop"
    item.image = scene_import.image_from_bytes(f"AIGC history {item.number} ({label})", image_data,
                                               scene_import.COLOUR_SPACES[scene_import.ALBEDO])
    while len(settings.history) > MAX_ITEMS:
        _remove(settings, 0)
    settings.history_index = len(settings.history) - 1


def _remove(settings, index: int) -> None:
    image = settings.history[index].image
    settings.history.remove(index)
    if image is not None and image.users == 0:
        bpy.data.images.remove(image)


def item(scene: bpy.types.Scene, index: int = -1):
    """The item at ``index`` (-1: the active one), or None."""
    settings = scene.aigc
    index = settings.history_index if index < 0 else index
    return settings.history[index] if 0 <= index < len(settings.history) else None


def rerun_task(entry) -> plans.Task:
    """The recorded request, unchanged (seed included)."""
    request = json.loads(entry.request)
    return plans.Task(entry.task_kind, entry.target, request["prompt"], dict(request["fields"]),
                      snapshot=entry.panel)


def set_seed(settings, seed: str) -> None:
    """Fixed seed: the int field when it fits, else the exact text (seeds go up to 2**53)."""
    settings.seed_mode = "FIXED"
    value = int(seed)
    if value < 2**31:
        settings.seed = value  # clears seed_exact (its update)
    else:
        settings.seed_exact = seed


def recall(scene: bpy.types.Scene, entry) -> None:
    """Fill the panel from an item: its settings, the object's description, the seed (fixed); the target
    becomes the selected, active object, so Texture Selected repeats it."""
    settings = scene.aigc
    panel = json.loads(entry.panel or "{}")
    for name in plans.PANEL_FIELDS:
        if name in panel:
            setattr(settings, name, panel[name])
    if entry.seed:
        set_seed(settings, entry.seed)
    obj = bpy.data.objects.get(entry.target) if entry.task_kind == plans.TEXTURE else None
    if obj is not None:
        if panel.get("object_prompt") is not None:
            obj[scene_data.PROMPT_PROPERTY] = panel["object_prompt"]
        elif scene_data.PROMPT_PROPERTY in obj:
            del obj[scene_data.PROMPT_PROPERTY]
        view_layer = bpy.context.view_layer
        if obj.name in view_layer.objects:
            for other in view_layer.objects:
                other.select_set(other == obj)
            view_layer.objects.active = obj
