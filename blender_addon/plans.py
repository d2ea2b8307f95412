"""What to ask the sidecar for: the scene settings and selection turned into tasks (prompt + request
fields), with prompts from the shared composer. Reading only; nothing here talks to the sidecar."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import bpy

from aigc_bridge.prompts import compose_object_prompt, compose_world_prompt

from . import image_edits, scene_data
from .messages import UserMessage
from .scene_import import TEXTURE_FOLDER

TEXTURE, BACKDROP = "texture", "backdrop"
RESTYLE, TILEABLE = "restyle", "tileable"  # an existing image as the init (image_edits)
SHAPE = "shape"  # Texture from Shape: one project request for the selection (shape.py)


@dataclass
class Task:
    """One generate request and where its image goes (an object's name, or the scene's for a backdrop); for
    SHAPE, ``fields`` holds the project request and the objects' UV maps."""

    kind: str
    target: str
    prompt: str
    fields: dict = field(default_factory=dict)
    snapshot: str = ""         # the panel's settings (JSON) when it was planned: what Recall puts back
    job: object | None = None  # the client's Job once sent
    node: tuple[str, str] | None = None  # Restyle: (material, Image Texture node) the init came from

    @property
    def label(self) -> str:
        return "backdrop" if self.kind == BACKDROP else self.target


@dataclass(frozen=True)
class ImportOptions:
    """How results land in the scene."""

    pack: bool = True
    directory: str | None = None
    tile_repeat: float | None = None
    backdrop_target: str = "WORLD"


# The panel settings a generation used (history keeps them; Recall writes them back, with the seed fixed).
PANEL_FIELDS = ("style", "world_description", "object_template", "world_template", "negative_prompt", "size_mode",
                "texture_size", "backdrop_size", "width", "height", "backdrop_width", "backdrop_height", "steps",
                "tiling", "pbr_maps", "tile_repeat", "backdrop_target")


def panel_snapshot(scene: bpy.types.Scene, obj: bpy.types.Object | None = None) -> str:
    """The panel's settings now (and the object's own description), as JSON."""
    settings = scene.aigc
    snapshot = {name: getattr(settings, name) for name in PANEL_FIELDS}
    if obj is not None:
        snapshot["object_prompt"] = obj.get(scene_data.PROMPT_PROPERTY)
    return json.dumps(snapshot)


def _seed(settings) -> int | None:
    if settings.seed_mode != "FIXED":
        return None  # the sidecar picks, and says which
    return int(settings.seed_exact) if settings.seed_exact.strip() else settings.seed


def size_fields(settings, kind: str) -> dict:
    """Model's size (default): width and height left to the model, the output resized to the chosen size;
    Custom: generated at the given size (0 leaves a side to the model), not resized."""
    if settings.size_mode == "CUSTOM":
        width, height = ((settings.width, settings.height) if kind == TEXTURE
                         else (settings.backdrop_width, settings.backdrop_height))
        return {"width": width or None, "height": height or None, "target_size": None}
    size = settings.texture_size if kind == TEXTURE else settings.backdrop_size
    return {"width": None, "height": None, "target_size": None if size == "NATIVE" else int(size)}


def texture_tasks(scene: bpy.types.Scene, objects: list[bpy.types.Object]) -> list[Task]:
    """One texture task per mesh object, prompts composed from the scene description."""
    settings = scene.aigc
    description = scene_data.describe_scene(scene, objects)
    fields = {**size_fields(settings, TEXTURE), "steps": settings.steps or None,
              "seed": _seed(settings), "tile": "both" if settings.tiling else "none", "kind": TEXTURE,
              "negative_prompt": settings.negative_prompt, "pbr": settings.pbr_maps}
    return [Task(TEXTURE, obj.name, compose_object_prompt(description, item, settings.object_template),
                 dict(fields), panel_snapshot(scene, obj))
            for obj, item in zip(objects, description["objects"])]


def backdrop_task(scene: bpy.types.Scene) -> Task:
    """The backdrop task: an equirectangular panorama (2:1, wraps on x, poles softened by the sidecar) for
    the World; a plain picture for a camera plane (which shows its middle at the camera's aspect)."""
    settings = scene.aigc
    prompt = compose_world_prompt(scene_data.describe_scene(scene), settings.world_template)
    world = settings.backdrop_target == "WORLD"
    return Task(BACKDROP, scene.name, prompt, {
        **size_fields(settings, BACKDROP), "steps": settings.steps or None,
        "seed": _seed(settings), "tile": "x" if world else "none", "kind": BACKDROP if world else TEXTURE,
        "negative_prompt": settings.negative_prompt}, panel_snapshot(scene))


def import_options(scene: bpy.types.Scene) -> ImportOptions:
    """Packed, or beside the .blend when the user chose so and the .blend has a folder (else packed)."""
    settings = scene.aigc
    beside = settings.storage == "BESIDE" and bool(bpy.data.filepath)
    return ImportOptions(pack=not beside, directory=f"//{TEXTURE_FOLDER}" if beside else None,
                         tile_repeat=settings.tile_repeat if settings.tiling else None,
                         backdrop_target=settings.backdrop_target)


def restyle_task(scene: bpy.types.Scene, obj: bpy.types.Object) -> Task | UserMessage:
    """Image to image on the object's image texture, with the prompt Texture Selected would send for it."""
    found = image_edits.texture_node(obj)
    if found is None:
        return image_edits.no_texture(obj)
    material, node = found
    settings = scene.aigc
    description = scene_data.describe_scene(scene, [obj])
    prompt = compose_object_prompt(description, description["objects"][0], settings.object_template)
    fields = {**size_fields(settings, TEXTURE), "steps": settings.steps or None, "seed": _seed(settings),
              "tile": "both" if settings.tiling else "none", "kind": TEXTURE,
              "negative_prompt": settings.negative_prompt, "init": image_edits.image_bytes(node.image),
              "strength": round(float(settings.restyle_strength), 4)}
    return Task(RESTYLE, obj.name, prompt, fields, node=(material.name, node.name))


def tileable_task(scene: bpy.types.Scene, image: bpy.types.Image) -> Task:
    """The image made seamless (a band around its seams repainted, the rest kept): the sidecar's
    seamless_band request; the result keeps the image's size."""
    settings = scene.aigc
    fields = {"steps": settings.steps or None, "seed": _seed(settings), "tile": "both", "kind": TEXTURE,
              "negative_prompt": settings.negative_prompt, "init": image_edits.image_bytes(image),
              "seamless_band": round(float(settings.tileable_band), 4)}
    return Task(TILEABLE, image.name, settings.image_prompt, fields)
