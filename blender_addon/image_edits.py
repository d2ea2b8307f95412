"""Restyle and Make Tileable: an image already in the file sent as a request's init, the result put beside it.

Restyle finds the image texture of an object's material (the active Image Texture node, else the one feeding
Base Color, else the first) and swaps in the restyled image; Make Tileable makes a new image next to the
Image Editor's and shows it there. The original is never overwritten (undo and comparison stay possible), and a
re-run replaces our previous result instead of stacking another. The bytes sent are the image's own file when
it is a PNG, JPEG or WebP (packed or on disk), else a PNG Blender writes from its pixels.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import bpy

from . import scene_import
from .messages import UserMessage

RESTYLED_FROM = "aigc_restyled_from"    # on a result image: the name of the image it was made from
TILEABLE_FROM = "aigc_tileable_from"
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def image_bytes(image: bpy.types.Image) -> bytes:
    """The encoded image to send: its own PNG / JPEG / WebP bytes when it has them, else a PNG of its pixels."""
    data = b""
    if image.packed_file is not None:
        data = bytes(image.packed_file.data)
    elif image.source == "FILE" and image.filepath:
        path = bpy.path.abspath(image.filepath)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
    if data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return data
    if not image.has_data and image.size[0] == 0:
        raise ValueError(f"the image {image.name} has no pixels (its file is missing)")
    with tempfile.TemporaryDirectory(prefix="aigc-image-") as folder:
        path = os.path.join(folder, "image.png")
        copy = image.copy()  # saving the original would repoint its file path
        try:
            copy.filepath_raw = path
            copy.file_format = "PNG"
            copy.save()
        finally:
            bpy.data.images.remove(copy)
        with open(path, "rb") as f:
            return f.read()


def texture_node(obj: bpy.types.Object) -> tuple[bpy.types.Material, bpy.types.ShaderNodeTexImage] | None:
    """The object's image texture to restyle: the active Image Texture node of its active material, else the
    one wired into Base Color, else the first with an image."""
    material = obj.active_material if obj is not None else None
    if material is None or material.node_tree is None:
        return None
    tree = material.node_tree
    images = [n for n in tree.nodes if n.type == "TEX_IMAGE" and n.image is not None]
    if not images:
        return None
    active = tree.nodes.active
    if active in images:
        return material, active
    for link in tree.links:
        if link.to_socket.name == "Base Color" and link.from_node in images:
            return material, link.from_node
    return material, images[0]


def no_texture(obj: bpy.types.Object | None) -> UserMessage:
    name = obj.name if obj is not None else "The active object"
    return UserMessage(f"{name} has no image texture to restyle.",
                       "Give its material an Image Texture node with an image, or use Texture Selected Objects",
                       "no_image_texture")


def _original(image: bpy.types.Image, key: str) -> str:
    """The image a chain of our results started from (so a re-run is named and replaced, not stacked)."""
    return image.get(key) or image.name


def apply_restyle(obj: bpy.types.Object, material_name: str, node_name: str, data: bytes, info: Mapping, *,
                  pack: bool = True, directory: str | None = None) -> bpy.types.Image | None:
    """Swap the restyled image into the node it was read from; None when the node is gone."""
    material = bpy.data.materials.get(material_name)
    node = material.node_tree.nodes.get(node_name) if material is not None and material.node_tree else None
    if node is None or node.type != "TEX_IMAGE" or node.image is None:
        return None
    old = node.image
    source = _original(old, RESTYLED_FROM)
    image = scene_import.image_from_bytes(f"{source} restyled", data, old.colorspace_settings.name, pack=pack,
                                          directory=directory)
    image[RESTYLED_FROM] = source
    scene_import.store_info(image, info)
    node.image = image
    if old.get(RESTYLED_FROM) and old.users == 0:  # our previous restyle, now unused: replaced
        bpy.data.images.remove(old)
        image.name = f"{source} restyled"
    return image


def apply_tileable(image_name: str, data: bytes, info: Mapping, *, pack: bool = True,
                   directory: str | None = None) -> bpy.types.Image | None:
    """A tileable copy beside the image, shown in every Image Editor that showed it; None when it is gone."""
    old = bpy.data.images.get(image_name)
    if old is None:
        return None
    source = _original(old, TILEABLE_FROM)
    previous = [i for i in bpy.data.images if i.get(TILEABLE_FROM) == source]
    image = scene_import.image_from_bytes(f"{source} tileable", data, old.colorspace_settings.name, pack=pack,
                                          directory=directory)
    image[TILEABLE_FROM] = source
    scene_import.store_info(image, info)
    for window in bpy.context.window_manager.windows if bpy.context.window_manager else ():
        for area in window.screen.areas:
            for space in area.spaces:
                if space.type == "IMAGE_EDITOR" and space.image in (old, *previous):
                    space.image = image
    for stale in previous:
        if stale.users == 0:
            bpy.data.images.remove(stale)
    image.name = f"{source} tileable"
    return image
