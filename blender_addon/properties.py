"""Per-scene settings (``scene.aigc``): what the panel edits and the .blend keeps.

Generation state (the running job, progress, the last error) is not here: it lives in ``runner`` for the
session, so undo and file saves never capture a half-finished job.
"""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from aigc_bridge.prompts import OBJECT_TEMPLATE, WORLD_TEMPLATE

_OUTPUT_SIZES = [("NATIVE", "As generated", "No resizing")] + [
    (str(n), f"{n} px", f"Resize to {n} px wide") for n in (256, 512, 1024, 2048, 4096)]


def _seed_changed(settings, _context) -> None:
    settings.seed_exact = ""  # a seed typed in replaces one recalled from the history


class AIGC_HistoryItem(bpy.types.PropertyGroup):
    """One generation (``history``): what was asked, with what, and the image it gave."""

    number: IntProperty(name="Number")
    created: StringProperty(name="Created")
    task_kind: StringProperty(name="Task")           # texture / backdrop
    target: StringProperty(name="Target")            # the object, or the scene for a backdrop
    backdrop_target: StringProperty(name="Backdrop", default="WORLD")
    prompt: StringProperty(name="Prompt")
    negative_prompt: StringProperty(name="Negative")
    seed: StringProperty(name="Seed")                # text: seeds go up to 2**53
    steps: IntProperty(name="Steps")
    model: StringProperty(name="Model")
    model_hash: StringProperty(name="Model hash")
    width: IntProperty(name="Width")
    height: IntProperty(name="Height")
    target_size: IntProperty(name="Output size")
    tile: StringProperty(name="Tiling")
    kind: StringProperty(name="Kind")
    request: StringProperty(name="Request")          # JSON: prompt and fields as sent (Re-run)
    panel: StringProperty(name="Panel")              # JSON: the panel's settings then (Recall)
    image: bpy.props.PointerProperty(name="Image", type=bpy.types.Image)


class AIGC_SceneSettings(bpy.types.PropertyGroup):
    style: StringProperty(name="Style", description="The look of the whole scene, added to every prompt",
                          default="")
    world_description: StringProperty(name="World", description="What the backdrop shows", default="")
    object_template: StringProperty(
        name="Object template", default=OBJECT_TEMPLATE,
        description="Texture prompt; fields {subject} {name} {prompt} {material} {collection} {style} "
                    "{world}; a comma-separated part whose fields are all empty is left out")
    world_template: StringProperty(name="World template", default=WORLD_TEMPLATE,
                                   description="Backdrop prompt; same fields as the object template")
    negative_prompt: StringProperty(name="Negative", description="What the images should not show",
                                    default="")
    # Sizes: by default the model generates at its own size (what it does well, in seconds) and the result is
    # resized to the output size an engine wants; Custom generates at the given size (0: the model's).
    size_mode: EnumProperty(name="Generate at", default="MODEL", items=[
        ("MODEL", "Model's size", "Generate at the model's own size, then resize to Texture Size (fast; what the "
                                  "model was trained for)"),
        ("CUSTOM", "Custom", "Generate at Width x Height (slower and more memory; the sidecar refuses what this "
                             "machine cannot hold)")])
    texture_size: EnumProperty(name="Texture Size", default="512", items=_OUTPUT_SIZES,
                               description="Size of the texture files (a power of two, as engines want)")
    backdrop_size: EnumProperty(name="Backdrop Size", default="1024", items=_OUTPUT_SIZES,
                                description="Width of the backdrop image (an equirectangular World is 2:1)")
    width: IntProperty(name="Width", default=0, min=0, max=4096, step=64, subtype="PIXEL",
                       description="Custom generation width (a multiple of the model's size step; 0: the model's)")
    height: IntProperty(name="Height", default=0, min=0, max=4096, step=64, subtype="PIXEL",
                        description="Custom generation height (0: the model's)")
    backdrop_width: IntProperty(name="Width", default=0, min=0, max=4096, step=64, subtype="PIXEL",
                                description="Custom backdrop width; 2:1 for an equirectangular World (0: the model's)")
    backdrop_height: IntProperty(name="Height", default=0, min=0, max=4096, step=64, subtype="PIXEL",
                                 description="Custom backdrop height (0: half the width)")
    steps: IntProperty(name="Steps", default=0, min=0, max=500,
                       description="Denoising steps (0: the model's recommendation)")
    seed_mode: EnumProperty(name="Seed", default="RANDOM", items=[
        ("RANDOM", "Random", "A new seed every run (the one used is stored with the result)"),
        ("FIXED", "Fixed", "The same seed every run, to repeat or vary a result deliberately")])
    seed: IntProperty(name="Seed", default=0, min=0, description="The seed when Seed is Fixed",
                      update=_seed_changed)
    seed_exact: StringProperty(name="Seed", default="",
                               description="A recalled seed too large for the Seed field (used when set)")
    tiling: BoolProperty(name="Tiling", default=True,
                         description="Seamless textures that repeat without visible edges")
    pbr_maps: BoolProperty(name="PBR maps", default=True,
                           description="Also wire the normal and roughness maps the sidecar derives")
    restyle_strength: FloatProperty(
        name="Strength", default=0.6, min=0.05, max=1.0, subtype="FACTOR",
        description="Restyle: how far the result may move from the image texture (low keeps its layout, 1 "
                    "repaints it from the prompt)")
    image_prompt: StringProperty(
        name="Prompt", default="",
        description="Make Tileable: what the image shows (helps the model continue it across the seams)")
    tileable_band: FloatProperty(
        name="Band", default=0.25, min=0.05, max=0.5, subtype="FACTOR",
        description="Make Tileable: the width of the band repainted around the seams, as a fraction of each "
                    "side; everything outside it is kept exactly")
    tile_repeat: FloatProperty(name="Repeat", default=1.0, min=0.01, max=1000.0,
                               description="How often a tiling texture repeats per UV unit (Mapping node)")
    backdrop_target: EnumProperty(name="Backdrop", default="WORLD", items=[
        ("WORLD", "World", "Equirectangular environment in the World (lights the scene, seen all around)"),
        ("PLANE", "Camera plane", "A plane that fills the camera's view, parented to the camera")])
    storage: EnumProperty(name="Images", default="PACK", items=[
        ("PACK", "Pack into .blend", "Keep generated images inside the .blend file"),
        ("BESIDE", "Save beside .blend", "Write PNGs to an aigc_textures folder next to the saved .blend")])
    show_templates: BoolProperty(name="Templates", default=False)
    history: bpy.props.CollectionProperty(type=AIGC_HistoryItem)
    history_index: IntProperty(name="History", default=0, min=0)
    history_counter: IntProperty(default=0)
    show_history: BoolProperty(name="History", default=True)
    # Texture from Shape (multi-view projection into the objects' own UV maps)
    shape_cameras: EnumProperty(name="Views", default="RING", items=[
        ("RING", "Ring", "Cameras on a ring around the selected objects, plus top / bottom"),
        ("SCENE", "Scene cameras", "Every camera of the scene, in name order")])
    shape_views: IntProperty(name="Views", default=8, min=1, max=64,
                             description="Cameras on the ring around the objects")
    shape_elevation: FloatProperty(name="Elevation", default=15.0, min=-89.0, max=89.0,
                                   description="Degrees above the horizon of the ring's cameras")
    shape_top: BoolProperty(name="Top", default=True, description="Add a view from straight above")
    shape_bottom: BoolProperty(name="Bottom", default=False, description="Add a view from straight below")
    shape_view_size: IntProperty(name="View Size", default=128, min=16, max=2048, step=32, subtype="PIXEL",
                                 description="Pixels per view (each view is generated at this size)")
    shape_texture_size: EnumProperty(name="Texture Size", default="1024", items=[
        (str(n), f"{n} px", f"Bake into a {n} x {n} texture") for n in (256, 512, 1024, 2048, 4096)])
    shape_control_scale: FloatProperty(name="ControlNet Strength", default=1.0, min=0.0, max=2.0,
                                       description="How strongly the depth ControlNet makes views follow the "
                                                   "shape (models that have one)")


CLASSES = (AIGC_HistoryItem, AIGC_SceneSettings)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.aigc = bpy.props.PointerProperty(type=AIGC_SceneSettings)


def unregister() -> None:
    del bpy.types.Scene.aigc
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
