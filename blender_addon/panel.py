"""The sidebar panel (3D View > N > AIGC): status, descriptions, settings, the prompts that will be sent,
the two generate buttons, and progress with cancel while a run goes on. Drawing only reads state."""

import textwrap

import bpy

from aigc_bridge.prompts import compose_object_prompt, compose_world_prompt

from . import image_edits, runner, scene_data
from .messages import UserMessage


def _wrapped(layout: bpy.types.UILayout, context: bpy.types.Context, text: str, icon: str = "NONE") -> None:
    """Labels do not wrap: split long text into lines that fit the sidebar."""
    region = getattr(context, "region", None)
    width = max(20, int((region.width if region is not None else 280) / 7))
    col = layout.column(align=True)
    for i, line in enumerate(textwrap.wrap(text, width, break_on_hyphens=False) or [""]):
        col.label(text=line, icon=icon if i == 0 else "BLANK1" if icon != "NONE" else "NONE")


def _error(layout: bpy.types.UILayout, context: bpy.types.Context, msg: UserMessage) -> None:
    box = layout.box()
    box.alert = True
    _wrapped(box, context, msg.text, icon="ERROR")
    if msg.fix:
        _wrapped(box, context, f"Fix: {msg.fix}.", icon="INFO")


def _preview(layout: bpy.types.UILayout, context: bpy.types.Context, make) -> None:
    """The prompt that will be sent, shown before it is sent."""
    try:
        text = make()
    except Exception as exc:  # a bad template must not break drawing
        _wrapped(layout, context, f"Template error: {getattr(exc, 'message', exc)}", icon="ERROR")
        return
    _wrapped(layout, context, f"“{text}”", icon="TEXT")


def _progress(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """The running job's progress bar and Cancel, else the last run's outcome."""
    state = runner.STATE
    run = state.run
    if run is not None:
        col = layout.column()
        step = run.progress
        detail = f" step {step.step}/{step.total}" if step is not None and step.stage == "denoising" else (
            f" view {min(step.step + 1, step.total)}/{step.total} {step.stage}"
            if step is not None and run.task.kind == "shape" and step.stage not in (None, "queued") else
            f" {step.stage}" if step is not None and step.stage else "")
        col.progress(factor=run.fraction, type="BAR",
                     text=f"{run.task.label} ({run.index + 1}/{len(run.tasks)}){detail}")
        col.operator("aigc.cancel", icon="CANCEL", text="Cancelling…" if run.cancelling else "Cancel")
    elif state.info:
        _wrapped(layout, context, state.info, icon="INFO")


def draw_image_panel(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """The Image Editor's panel: Make Tileable on the image it shows."""
    state = runner.STATE
    if state.error is not None:
        _error(layout, context, state.error)
    _progress(layout, context)
    settings = context.scene.aigc
    col = layout.column(align=True)
    col.prop(settings, "image_prompt")
    col.prop(settings, "tileable_band")
    col.prop(settings, "steps")
    col = layout.column()
    col.scale_y = 1.4
    col.enabled = state.run is None and getattr(context.space_data, "image", None) is not None
    col.operator("aigc.make_tileable", icon="MOD_ARRAY")


def draw_panel(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    state = runner.STATE
    scene = context.scene
    settings = scene.aigc

    box = layout.box()
    row = box.row()
    row.label(text=runner.status_summary(), icon="LINKED" if state.status else "UNLINKED")
    row.operator("aigc.refresh_status", text="", icon="FILE_REFRESH")
    if state.sidecar is not None:
        box.label(text=runner.sidecar_summary())
    if state.status_error is not None:
        _wrapped(box, context, str(state.status_error), icon="ERROR")
    if state.error is not None:
        _error(layout, context, state.error)

    run = state.run
    _progress(layout, context)

    layout.prop(settings, "style")
    obj = context.object
    if obj is not None:
        box = layout.box()
        box.label(text=obj.name, icon="OBJECT_DATA")
        if scene_data.PROMPT_PROPERTY in obj:
            box.prop(obj, f'["{scene_data.PROMPT_PROPERTY}"]', text="Prompt")
        else:
            box.operator("aigc.add_prompt", icon="ADD")
        if obj.type == "MESH":
            description = scene_data.describe_scene(scene, [obj])
            _preview(box, context, lambda: compose_object_prompt(description, description["objects"][0],
                                                                 settings.object_template))
            if image_edits.texture_node(obj) is not None:
                row = box.row(align=True)
                row.enabled = run is None
                row.prop(settings, "restyle_strength")
                row.operator("aigc.restyle", icon="BRUSH_DATA", text="Restyle")
    box = layout.box()
    box.prop(settings, "world_description")
    _preview(box, context, lambda: compose_world_prompt(scene_data.describe_scene(scene),
                                                        settings.world_template))

    col = layout.column(align=True)
    col.prop(settings, "size_mode")
    if settings.size_mode == "CUSTOM":
        row = col.row(align=True)
        row.prop(settings, "width")
        row.prop(settings, "height")
    else:
        col.prop(settings, "texture_size")
    col.prop(settings, "steps")
    row = col.row(align=True)
    row.prop(settings, "seed_mode", expand=True)
    if settings.seed_mode == "FIXED":
        col.prop(settings, "seed")
    row = col.row(align=True)
    row.prop(settings, "tiling")
    sub = row.row(align=True)
    sub.active = settings.tiling
    sub.prop(settings, "tile_repeat")
    col.prop(settings, "pbr_maps")
    col.prop(settings, "negative_prompt")
    col.prop(settings, "storage")

    col = layout.column(align=True)
    col.prop(settings, "backdrop_target")
    if settings.size_mode == "CUSTOM":
        row = col.row(align=True)
        row.prop(settings, "backdrop_width")
        row.prop(settings, "backdrop_height")
    else:
        col.prop(settings, "backdrop_size")

    layout.prop(settings, "show_templates", icon="TRIA_DOWN" if settings.show_templates else "TRIA_RIGHT")
    if settings.show_templates:
        box = layout.box()
        box.prop(settings, "object_template", text="Object")
        box.prop(settings, "world_template", text="World")
        box.operator("aigc.reset_templates", icon="LOOP_BACK")

    col = layout.column(align=True)
    col.scale_y = 1.4
    col.enabled = run is None
    col.operator("aigc.texture_selected", icon="TEXTURE")
    col.operator("aigc.generate_backdrop", icon="WORLD")

    box = layout.box()
    box.label(text="Texture from Shape", icon="MOD_UVPROJECT")
    col = box.column(align=True)
    col.prop(settings, "shape_cameras")
    if settings.shape_cameras == "RING":
        col.prop(settings, "shape_views")
        col.prop(settings, "shape_elevation")
        row = col.row(align=True)
        row.prop(settings, "shape_top")
        row.prop(settings, "shape_bottom")
    col.prop(settings, "shape_view_size")
    col.prop(settings, "shape_texture_size")
    col.prop(settings, "shape_control_scale")
    sub = box.column()
    sub.scale_y = 1.4
    sub.enabled = run is None
    sub.operator("aigc.texture_from_shape", icon="MOD_UVPROJECT")


class VIEW3D_PT_aigc(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "AIGC"
    bl_label = "AIGC Bridge"

    def draw(self, context: bpy.types.Context) -> None:
        draw_panel(self.layout, context)


class IMAGE_PT_aigc(bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "AIGC"
    bl_label = "AIGC Bridge"

    def draw(self, context: bpy.types.Context) -> None:
        draw_image_panel(self.layout, context)


CLASSES = (VIEW3D_PT_aigc, IMAGE_PT_aigc)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
