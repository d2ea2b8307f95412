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
        if run.waiting:  # Generate started the local sidecar: it is loading the model
            sidecar = state.sidecar
            seconds = f", {sidecar.elapsed:.0f} s" if sidecar is not None else ""
            col.progress(factor=0.0, type="BAR", text=f"Starting the local sidecar (loading the model{seconds})")
        else:
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
    draw_model_picker(box, context)
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
        col.prop(settings, "seed_exact" if settings.seed_exact else "seed")
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
    draw_history(layout, context, settings, run is None)


def draw_model_picker(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """The model the local sidecar serves, and a menu to switch (Preferences list them)."""
    from . import model_list, preferences

    prefs = preferences.get()
    if prefs.connection_mode != "LOCAL":
        return
    active = bpy.path.abspath(prefs.model_dir).rstrip("/\\")
    name = next((m.name for m in model_list.scan(bpy.path.abspath(prefs.models_folder)).models
                 if m.path.rstrip("/\\") == active), active or "texture-mini")
    layout.menu("AIGC_MT_models", text=f"Model: {name}", icon="FILE_3D")


def draw_history(layout: bpy.types.UILayout, context: bpy.types.Context, settings, idle: bool) -> None:
    """The generations recorded in the .blend, newest last, with Recall, Re-run and Use Seed."""
    layout.prop(settings, "show_history", icon="TRIA_DOWN" if settings.show_history else "TRIA_RIGHT",
                text=f"History ({len(settings.history)})")
    if not settings.show_history or not settings.history:
        return
    box = layout.box()
    box.template_list("AIGC_UL_history", "", settings, "history", settings, "history_index", rows=4)
    entry = settings.history[settings.history_index] if settings.history_index < len(settings.history) else None
    if entry is None:
        return
    _wrapped(box, context, f"“{entry.prompt}”", icon="TEXT")
    size = f"{entry.width} x {entry.height}" + (f" → {entry.target_size}" if entry.target_size else "")
    box.label(text=f"seed {entry.seed} · {entry.steps} steps · {size} · {entry.model}")
    row = box.row(align=True)
    row.enabled = idle
    row.operator("aigc.history_recall", icon="RECOVER_LAST")
    row.operator("aigc.history_rerun", icon="FILE_REFRESH")
    row.operator("aigc.history_use_seed", icon="DECORATE_KEYFRAME")


class AIGC_UL_history(bpy.types.UIList):
    """One line per generation: number, target, seed, model."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0) -> None:
        label = f"#{item.number} {item.target if item.task_kind == 'texture' else 'backdrop'}"
        layout.label(text=f"{label} · seed {item.seed} · {item.model}", icon="IMAGE_DATA")


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


CLASSES = (AIGC_UL_history, VIEW3D_PT_aigc, IMAGE_PT_aigc)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
