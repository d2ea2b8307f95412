"""Generated images into the scene: a texture set onto an object's material, a backdrop into the World or
onto a camera-facing plane.

bpy and the standard library only, no add-on state and no UI, so the batch runner can import this module
as is (``blender_addon.scene_import``, or the file) and get exactly what the panel gets. Each function
replaces what it made before (datablocks are tagged ``aigc_generated``) instead of piling up nodes, and
stores what made the result (prompt, seed, model...) as ``aigc_*`` custom properties.

Images: the colour space is set BEFORE the pixels arrive (setting it afterwards on a generated image
silently blanks it), then the PNG bytes are packed into the .blend or written beside it.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping

import bpy

GENERATED = "aigc_generated"       # marks datablocks this module owns (and may replace)
SOURCE_MATERIAL = "aigc_source_material"  # the user's material name a generated material replaced
ALBEDO = "albedo"
# Colour space per map role: colour in sRGB, numbers as Non-Color (never converted).
COLOUR_SPACES = {ALBEDO: "sRGB", "normal": "Non-Color", "roughness": "Non-Color", "orm": "Non-Color",
                 "height": "Non-Color", "ao": "Non-Color", "backdrop": "sRGB"}
EXR_COLOUR_SPACE = "Linear Rec.709"  # HDR backdrops (format exr) are linear-light colour
TEXTURE_FOLDER = "aigc_textures"     # beside the .blend, when textures are saved rather than packed
PLANE_NAME = "AIGC Backdrop"
_INFO_KEYS = ("prompt", "negative_prompt", "seed", "model", "model_hash", "provider", "steps", "width",
              "height", "target_size", "tile", "kind", "request_key")

__all__ = ["COLOUR_SPACES", "apply_baked_texture", "apply_texture_set", "ensure_uvs", "image_from_bytes",
           "set_backdrop_plane", "set_world_backdrop", "store_info"]


# --- images --------------------------------------------------------------------------------------------


def _file_stem(text: str) -> str:
    stem = re.sub(r"[^\w.-]+", "_", text, flags=re.UNICODE).strip("._")
    return stem[:80] or "image"


def _is_exr(data: bytes) -> bool:
    return data[:4] == b"\x76\x2f\x31\x01"


def image_from_bytes(name: str, data: bytes, colour_space: str, *, pack: bool = True,
                     directory: str | None = None) -> bpy.types.Image:
    """An image datablock holding exactly these PNG/EXR bytes. ``pack``: inside the .blend; otherwise the
    file is written to ``directory`` (an absolute or ``//``-relative folder) and the image refers to it."""
    ext = ".exr" if _is_exr(data) else ".png"
    if pack:
        image = bpy.data.images.new(name, 1, 1, alpha=True, float_buffer=ext == ".exr")
        image.colorspace_settings.name = colour_space  # before the pixels (see module doc)
        image.pack(data=data, data_len=len(data))
        image.source = "FILE"
        image.filepath_raw = f"//{TEXTURE_FOLDER}/{_file_stem(name)}{ext}"  # where "unpack" would write it
    else:
        if directory is None:
            raise ValueError("directory is needed when the image is not packed")
        folder = bpy.path.abspath(directory)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, _file_stem(name) + ext)
        with open(path, "wb") as f:
            f.write(data)
        image = bpy.data.images.load(path, check_existing=False)
        image.name = name
        image.colorspace_settings.name = colour_space  # before anything reads the pixels
        if bpy.data.filepath:
            image.filepath = bpy.path.relpath(path)
    image[GENERATED] = True
    return image


def _remove_unused_generated(images: list[bpy.types.Image]) -> None:
    for image in images:
        if image.get(GENERATED) and image.users == 0:
            bpy.data.images.remove(image)


def store_info(idblock: bpy.types.ID, info: Mapping) -> None:
    """Provenance as custom properties (``aigc_prompt``, ``aigc_seed``, ``aigc_model``...), so a user can
    see and repeat what made a result. Values that are not text or numbers are skipped."""
    for key in _INFO_KEYS:
        value = info.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int) and not -2**31 <= value < 2**31:
            value = str(value)  # IDProperty ints are 32-bit: keep big seeds exact as text
        if isinstance(value, (str, int, float)):
            idblock[f"aigc_{key}"] = value


# --- objects -------------------------------------------------------------------------------------------


def ensure_uvs(obj: bpy.types.Object) -> bool:
    """Smart UV project a mesh that has no UV map (True when it made one); meshes with UVs are left alone."""
    if obj.type != "MESH" or obj.data.uv_layers:
        return False
    mesh = obj.data
    if not mesh.polygons:
        mesh.uv_layers.new(name="UVMap")
        return True
    view_layer = bpy.context.view_layer
    previous = view_layer.objects.active
    selected = [o for o in view_layer.objects if o.select_get()]
    with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                                   selected_editable_objects=[obj]):
        view_layer.objects.active = obj
        for other in selected:
            other.select_set(False)
        obj.select_set(True)
        try:
            bpy.ops.object.mode_set(mode="EDIT")
            bpy.ops.mesh.select_all(action="SELECT")
            bpy.ops.uv.smart_project(angle_limit=math.radians(66.0), island_margin=0.02)
        except RuntimeError:  # not editable here (hidden, not in this view layer): one UV box per face
            if not mesh.uv_layers:
                mesh.uv_layers.new(name="UVMap")
        finally:
            if obj.mode != "OBJECT":
                bpy.ops.object.mode_set(mode="OBJECT")
    obj.select_set(False)
    for other in selected:
        other.select_set(True)
    view_layer.objects.active = previous
    return True


def _node_tree(idblock: bpy.types.ID) -> bpy.types.NodeTree:
    with warnings.catch_warnings():  # use_nodes: deprecated on Blender 5.0 (always on), needed on 4.x
        warnings.simplefilter("ignore", DeprecationWarning)
        if not idblock.use_nodes:
            idblock.use_nodes = True
    return idblock.node_tree


def _clear(tree: bpy.types.NodeTree) -> None:
    """Remove every node, and the generated images they used that nothing else uses (before the new
    images are made, so those get the old names instead of "name.001")."""
    images = [n.image for n in tree.nodes if getattr(n, "image", None) is not None]
    tree.nodes.clear()
    _remove_unused_generated(images)


def _generated_material(obj: bpy.types.Object) -> bpy.types.Material:
    """The object's generated material, reused on a second run; else a new one, in every slot (the whole
    object gets the texture), linked to the object when its mesh is shared so each object keeps its own."""
    for slot in obj.material_slots:
        if slot.material is not None and slot.material.get(GENERATED):
            return slot.material
    source = next((s.material.name for s in obj.material_slots if s.material is not None), "")
    material = bpy.data.materials.new(f"AIGC {obj.name}")
    material[GENERATED] = True
    material[SOURCE_MATERIAL] = source
    if not obj.material_slots:
        obj.data.materials.append(None)
    shared = obj.data.users > 1
    for slot in obj.material_slots:
        if shared:
            slot.link = "OBJECT"
        slot.material = material
    return material


def apply_texture_set(obj: bpy.types.Object, maps: Mapping[str, bytes], info: Mapping | None = None, *,
                      tile_repeat: float | None = None, pack: bool = True,
                      directory: str | None = None) -> bpy.types.Material:
    """Give ``obj`` a Principled BSDF material from a texture set: ``maps`` role -> PNG bytes, with
    ``albedo`` required and ``normal``, ``roughness`` wired when present (``orm``, G roughness and B
    metallic, when there is no separate roughness); other roles are ignored. ``tile_repeat``: a tiling
    texture repeats this many times per UV unit (Mapping node). Running it again on the same object
    replaces the previous material's nodes and images."""
    if ALBEDO not in maps:
        raise ValueError(f"a texture set needs an {ALBEDO!r} image, got {sorted(maps)}")
    info = info or {}
    ensure_uvs(obj)
    material = _generated_material(obj)
    tree = _node_tree(material)
    _clear(tree)
    nodes, links = tree.nodes, tree.links

    out = nodes.new("ShaderNodeOutputMaterial")
    out.location = (400, 0)
    bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    bsdf.name = "AIGC BSDF"
    links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    coords = nodes.new("ShaderNodeTexCoord")
    coords.location = (-900, 0)
    vector = coords.outputs["UV"]
    if tile_repeat:
        mapping = nodes.new("ShaderNodeMapping")
        mapping.name = "AIGC Mapping"
        mapping.location = (-700, 0)
        mapping.inputs["Scale"].default_value = (tile_repeat, tile_repeat, 1.0)
        links.new(vector, mapping.inputs["Vector"])
        vector = mapping.outputs["Vector"]

    label = obj.name
    row = 0

    def texture(role: str) -> bpy.types.ShaderNodeTexImage:
        nonlocal row
        image = image_from_bytes(f"AIGC {label} {role}", maps[role], COLOUR_SPACES.get(role, "Non-Color"),
                                 pack=pack, directory=directory)
        store_info(image, info)
        node = nodes.new("ShaderNodeTexImage")
        node.name = f"AIGC {role}"
        node.label = role
        node.image = image
        node.location = (-450, 300 - 300 * row)
        row += 1
        links.new(vector, node.inputs["Vector"])
        return node

    links.new(texture(ALBEDO).outputs["Color"], bsdf.inputs["Base Color"])
    if "normal" in maps:
        normal_map = nodes.new("ShaderNodeNormalMap")
        normal_map.name = "AIGC Normal Map"
        normal_map.location = (-150, -300)
        links.new(texture("normal").outputs["Color"], normal_map.inputs["Color"])
        links.new(normal_map.outputs["Normal"], bsdf.inputs["Normal"])
    if "roughness" in maps:
        links.new(texture("roughness").outputs["Color"], bsdf.inputs["Roughness"])
    if "orm" in maps and "roughness" not in maps:  # the packed map only when the separate one is missing
        split = nodes.new("ShaderNodeSeparateColor")
        split.name = "AIGC ORM split"
        links.new(texture("orm").outputs["Color"], split.inputs["Color"])
        links.new(split.outputs["Green"], bsdf.inputs["Roughness"])
        links.new(split.outputs["Blue"], bsdf.inputs["Metallic"])
    store_info(material, info)
    material["aigc_maps"] = ",".join(sorted(n.name[5:] for n in nodes if n.name.startswith("AIGC ")
                                            and n.bl_idname == "ShaderNodeTexImage"))
    return material


def apply_baked_texture(obj: bpy.types.Object, png: bytes, uv_map: str, info: Mapping | None = None, *,
                        pack: bool = True, directory: str | None = None) -> bpy.types.Material:
    """A texture baked for ``obj``'s own UV map ("Texture from Shape"): the generated material (replaced on
    a re-run, never stacked) with the image read through a UV Map node naming ``uv_map``, so it stays on
    the map it was baked for when the object has several (glTF export carries it as baseColorTexture)."""
    material = apply_texture_set(obj, {ALBEDO: png}, info, pack=pack, directory=directory)
    tree = material.node_tree
    coords = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeTexCoord")
    uv_node = tree.nodes.new("ShaderNodeUVMap")
    uv_node.name = "AIGC UV Map"
    uv_node.uv_map = uv_map
    uv_node.location = coords.location
    image_node = tree.nodes[f"AIGC {ALBEDO}"]
    image_node.extension = "EXTEND"  # a baked map does not repeat: its padded gutter is the border
    tree.links.new(uv_node.outputs["UV"], image_node.inputs["Vector"])
    tree.nodes.remove(coords)
    material["aigc_uv_map"] = uv_map
    material["aigc_baked"] = True
    return material


# --- backdrops -----------------------------------------------------------------------------------------


def set_world_backdrop(scene: bpy.types.Scene, data: bytes, info: Mapping | None = None, *,
                       pack: bool = True, directory: str | None = None,
                       strength: float = 1.0) -> bpy.types.World:
    """Make an equirectangular image the scene's World: Environment Texture -> Background -> output.
    A World this module made is rebuilt in place; a user's World is left as is and replaced in the scene."""
    info = info or {}
    world = scene.world
    if world is None or not world.get(GENERATED):
        world = bpy.data.worlds.new("AIGC Backdrop")
        world[GENERATED] = True
        scene.world = world
    tree = _node_tree(world)
    _clear(tree)
    nodes, links = tree.nodes, tree.links
    colour_space = EXR_COLOUR_SPACE if _is_exr(data) else COLOUR_SPACES["backdrop"]
    image = image_from_bytes(f"AIGC {scene.name} backdrop", data, colour_space, pack=pack, directory=directory)
    store_info(image, info)
    env = nodes.new("ShaderNodeTexEnvironment")
    env.name = "AIGC Environment"
    env.projection = "EQUIRECTANGULAR"
    env.image = image
    env.location = (-300, 0)
    background = nodes.new("ShaderNodeBackground")
    background.name = "AIGC Background"
    background.inputs["Strength"].default_value = strength
    out = nodes.new("ShaderNodeOutputWorld")
    out.location = (300, 0)
    links.new(env.outputs["Color"], background.inputs["Color"])
    links.new(background.outputs["Background"], out.inputs["Surface"])
    store_info(world, info)
    return world


def _cover(plane_w: float, plane_h: float, image_w: int, image_h: int) -> tuple[tuple, tuple]:
    """UV corners (lower left, upper right) that show the middle of the image at the plane's aspect, as
    "cover" does on the web: nothing stretched, the overhang cropped."""
    plane, picture = plane_w / max(plane_h, 1e-9), image_w / max(image_h, 1)
    if picture > plane:  # wider than the frame: crop left and right
        span = plane / picture
        return (0.5 - span / 2, 0.0), (0.5 + span / 2, 1.0)
    span = picture / plane
    return (0.0, 0.5 - span / 2), (1.0, 0.5 + span / 2)


def set_backdrop_plane(scene: bpy.types.Scene, data: bytes, info: Mapping | None = None, *,
                       camera: bpy.types.Object | None = None, distance: float = 50.0, pack: bool = True,
                       directory: str | None = None) -> bpy.types.Object:
    """A plane that fills the camera's view at ``distance``, parented to the camera so it keeps facing it,
    with an emission material (lights do not shade a backdrop), showing the image's middle at the camera's
    aspect. Replaces the plane made before."""
    info = info or {}
    camera = camera or scene.camera
    if camera is None or camera.type != "CAMERA":
        raise ValueError("the scene has no camera to face: add one or use the World backdrop")
    corners = camera.data.view_frame(scene=scene)  # camera space, on a plane z < 0
    scale = distance / max(1e-6, -corners[0].z)
    verts = [(c.x * scale, c.y * scale, -distance) for c in corners]  # top-right, bottom-right, bottom-left, top-left

    plane = bpy.data.objects.get(PLANE_NAME)
    if plane is not None and not plane.get(GENERATED):
        plane = None  # a user's object with our name: leave it alone
    colour_space = EXR_COLOUR_SPACE if _is_exr(data) else COLOUR_SPACES["backdrop"]
    image = image_from_bytes(f"AIGC {scene.name} backdrop plane", data, colour_space, pack=pack,
                             directory=directory)
    store_info(image, info)
    mesh = bpy.data.meshes.new(PLANE_NAME)
    mesh.from_pydata(verts, [], [(3, 2, 1, 0)])
    uv = mesh.uv_layers.new(name="UVMap")
    (u0, v0), (u1, v1) = _cover(verts[0][0] - verts[3][0], verts[0][1] - verts[1][1], *image.size)
    for loop, corner in zip(mesh.loops, [(u0, v1), (u0, v0), (u1, v0), (u1, v1)]):
        uv.data[loop.index].uv = corner
    if plane is None:
        plane = bpy.data.objects.new(PLANE_NAME, mesh)
        plane[GENERATED] = True
        scene.collection.objects.link(plane)
    else:
        old_mesh, plane.data = plane.data, mesh
        if old_mesh.users == 0:
            bpy.data.meshes.remove(old_mesh)
    plane.parent = camera
    plane.matrix_parent_inverse.identity()
    plane.matrix_basis.identity()

    material = bpy.data.materials.get(PLANE_NAME)
    if material is None or not material.get(GENERATED):
        material = bpy.data.materials.new(PLANE_NAME)
        material[GENERATED] = True
    tree = _node_tree(material)
    _clear(tree)
    nodes, links = tree.nodes, tree.links
    tex = nodes.new("ShaderNodeTexImage")
    tex.name = "AIGC backdrop"
    tex.image = image
    tex.extension = "EXTEND"
    emission = nodes.new("ShaderNodeEmission")
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(tex.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], out.inputs["Surface"])
    mesh.materials.append(material)
    store_info(material, info)
    store_info(plane, info)
    return plane
