"""The buttons. Each operator checks what it needs, hands the work to ``runner`` and returns at once (or,
in background mode, runs it to the end); no exception leaves an operator: failures are reported with the
fix and shown in the panel."""

import os

import bpy
from bpy.props import EnumProperty, StringProperty

from aigc_bridge.client import Client
from aigc_bridge.prompts import OBJECT_TEMPLATE, WORLD_TEMPLATE

from . import connection, exporting, history, launcher, model_list, plans, preferences, runner, scene_data, shape
from .mesh_arrays import MeshRefused
from .messages import UserMessage, describe, message
from .scene_import import ensure_uvs

_MODE = EnumProperty(name="Mode", default="AUTO", items=[
    ("AUTO", "Auto", "Blocking in background mode (unless the preference says otherwise), else a timer"),
    ("BLOCKING", "Blocking", "Wait for the result (scripts, batch)"),
    ("TIMER", "Non-blocking", "Return at once; a timer follows the job (the UI keeps running)")])


def _blocking(mode: str) -> bool:
    if mode != "AUTO":
        return mode == "BLOCKING"
    return bpy.app.background and not preferences.get().force_timer


def _report(op: bpy.types.Operator, msg: UserMessage) -> set[str]:
    runner.STATE.error = msg
    op.report({"ERROR"}, str(msg))
    return {"CANCELLED"}


def _client() -> Client:
    """A client for the sidecar the preferences name (the local one this Blender started wins)."""
    sidecar = runner.STATE.sidecar
    if sidecar is not None and sidecar.poll() == launcher.STARTING:
        raise launcher.LauncherError(UserMessage("The local sidecar is still starting (loading the model).",
                                                 "Wait until the status says it is running", "starting"))
    prefs = preferences.get()
    settings = preferences.settings(prefs, runner.local_connection_file())
    return connection.open_client(settings)


def _new_sidecar() -> launcher.LocalSidecar:
    prefs = preferences.get()
    return launcher.LocalSidecar(bpy.path.abspath(prefs.python_env), bpy.path.abspath(prefs.model_dir),
                                 preferences.sidecar_folder(), provider=prefs.provider)


def _should_start_local() -> bool:
    """Generate with nothing to talk to starts the local sidecar: Local mode, none started here (or the one
    started here stopped), no connection file set and none at the default place."""
    prefs = preferences.get()
    sidecar = runner.STATE.sidecar
    if prefs.connection_mode != connection.LOCAL or prefs.connection_file.strip():
        return False
    if sidecar is not None and sidecar.poll() in (launcher.STARTING, launcher.READY):
        return False
    return not os.path.exists(os.path.expanduser(connection.DEFAULT_CONNECTION_FILE))


def _client_or_start(blocking: bool) -> Client | None:
    """A client, or None when the run must wait for a local sidecar (started now, or still starting)."""
    sidecar = runner.STATE.sidecar
    if _should_start_local():
        sidecar = _new_sidecar()
        runner.start_sidecar(sidecar, blocking=blocking)
        if sidecar.state == launcher.FAILED:
            raise launcher.LauncherError(runner.STATE.error)
    if sidecar is not None and sidecar.poll() == launcher.STARTING:
        if blocking:
            sidecar.wait_ready()
            runner._sidecar_settled(sidecar)
            if sidecar.state != launcher.READY:
                raise launcher.LauncherError(runner.STATE.error)
        else:
            return None
    return _client()


class _Generate:
    """Shared by the two generate buttons: build the tasks, open a client, start the run."""

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None and not runner.busy()

    def tasks(self, context: bpy.types.Context) -> list[plans.Task] | UserMessage:
        raise NotImplementedError

    def prepare(self, context: bpy.types.Context, tasks: list[plans.Task]) -> None:
        """Scene changes the results need, made once the sidecar is known to be configured."""

    title = ""

    def import_options(self, context: bpy.types.Context) -> plans.ImportOptions:
        return plans.import_options(context.scene)

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            if runner.busy():
                return _report(self, message("busy_here", "A generation is already running"))
            tasks = self.tasks(context)
            if isinstance(tasks, UserMessage):
                return _report(self, tasks)
            blocking = _blocking(self.mode)
            client = _client_or_start(blocking)
            try:
                self.prepare(context, tasks)
            except Exception:
                if client is not None:
                    client.close()
                raise
            run = runner.Run(self.title, context.scene.name, client, client.endpoint if client else "", tasks,
                             self.import_options(context), connect=_client)
            runner.start(run, blocking=blocking)
        except Exception as exc:
            return _report(self, describe(exc))
        if blocking and runner.STATE.error is not None:
            return _report(self, runner.STATE.error)
        self.report({"INFO"}, runner.STATE.info)
        return {"FINISHED"}


class AIGC_OT_texture_selected(_Generate, bpy.types.Operator):
    """Generate a texture for each selected mesh from the scene and object descriptions"""

    bl_idname = "aigc.texture_selected"
    bl_label = "Texture Selected Objects"
    bl_options = {"REGISTER"}
    title = "Textures"
    mode: _MODE

    def tasks(self, context: bpy.types.Context) -> list[plans.Task] | UserMessage:
        if context.mode != "OBJECT":
            return UserMessage("Texturing works in Object Mode.", "Switch to Object Mode (Tab)", "mode")
        objects = sorted((o for o in context.selected_objects if o.type == "MESH"), key=lambda o: o.name)
        if not objects:
            return message("nothing_selected", "No mesh object is selected")
        return plans.texture_tasks(context.scene, objects)

    def prepare(self, context: bpy.types.Context, tasks: list[plans.Task]) -> None:
        for task in tasks:  # UVs now, in the operator's context, not later when the image lands
            ensure_uvs(bpy.data.objects[task.target])


class AIGC_OT_texture_from_shape(_Generate, bpy.types.Operator):
    """Texture the selected meshes from their shape: views around them, baked into their own UV maps"""

    bl_idname = "aigc.texture_from_shape"
    bl_label = "Texture from Shape"
    bl_options = {"REGISTER"}
    title = "Texture from Shape"
    mode: _MODE

    def tasks(self, context: bpy.types.Context) -> list[plans.Task] | UserMessage:
        if context.mode != "OBJECT":
            return UserMessage("Texturing works in Object Mode.", "Switch to Object Mode (Tab)", "mode")
        objects = sorted(context.selected_objects, key=lambda o: o.name)
        try:  # every check first: a refused selection leaves the scene as it was
            return [shape.shape_task(context.scene, objects, context.evaluated_depsgraph_get())]
        except MeshRefused as exc:
            return exc.user_message


class AIGC_OT_generate_backdrop(_Generate, bpy.types.Operator):
    """Generate a backdrop from the world description, into the World or onto a camera plane"""

    bl_idname = "aigc.generate_backdrop"
    bl_label = "Generate Backdrop"
    bl_options = {"REGISTER"}
    title = "Backdrop"
    mode: _MODE

    def tasks(self, context: bpy.types.Context) -> list[plans.Task] | UserMessage:
        scene = context.scene
        if scene.aigc.backdrop_target == "PLANE" and scene.camera is None:
            return message("no_camera", "The scene has no camera for a backdrop plane")
        return [plans.backdrop_task(scene)]


_INDEX = bpy.props.IntProperty(name="Index", default=-1, description="History item (-1: the active one)")


def _history_item(op: bpy.types.Operator, context: bpy.types.Context):
    entry = history.item(context.scene, op.index)
    if entry is None:
        _report(op, message("history", "No such history item"))
    return entry


class AIGC_OT_history_rerun(_Generate, bpy.types.Operator):
    """Send a recorded generation again, unchanged (same prompt, seed and settings), to its object or backdrop"""

    bl_idname = "aigc.history_rerun"
    bl_label = "Re-run"
    bl_options = {"REGISTER"}
    title = "Re-run"
    mode: _MODE
    index: _INDEX

    def tasks(self, context: bpy.types.Context) -> list[plans.Task] | UserMessage:
        entry = history.item(context.scene, self.index)
        if entry is None:
            return message("history", "No such history item")
        if entry.task_kind == plans.TEXTURE and bpy.data.objects.get(entry.target) is None:
            return UserMessage(f"The object {entry.target!r} is gone from the scene.",
                               "Recall it and texture another object instead", "history")
        return [history.rerun_task(entry)]

    def prepare(self, context: bpy.types.Context, tasks: list[plans.Task]) -> None:
        if tasks[0].kind == plans.TEXTURE:
            ensure_uvs(bpy.data.objects[tasks[0].target])

    def import_options(self, context: bpy.types.Context) -> plans.ImportOptions:
        entry = history.item(context.scene, self.index)
        base = plans.import_options(context.scene)
        return plans.ImportOptions(base.pack, base.directory, base.tile_repeat, entry.backdrop_target)


class AIGC_OT_history_recall(bpy.types.Operator):
    """Fill the panel from a recorded generation (settings, description, seed) and select its object"""

    bl_idname = "aigc.history_recall"
    bl_label = "Recall"
    bl_options = {"REGISTER", "UNDO"}
    index: _INDEX

    def execute(self, context: bpy.types.Context) -> set[str]:
        entry = _history_item(self, context)
        if entry is None:
            return {"CANCELLED"}
        try:
            history.recall(context.scene, entry)
        except Exception as exc:
            return _report(self, describe(exc))
        self.report({"INFO"}, f"Recalled #{entry.number} ({entry.target}, seed {entry.seed})")
        return {"FINISHED"}


class AIGC_OT_history_use_seed(bpy.types.Operator):
    """Use this generation's seed (Seed: Fixed), keeping the rest of the panel"""

    bl_idname = "aigc.history_use_seed"
    bl_label = "Use Seed"
    bl_options = {"REGISTER", "UNDO"}
    index: _INDEX

    def execute(self, context: bpy.types.Context) -> set[str]:
        entry = _history_item(self, context)
        if entry is None or not entry.seed:
            return {"CANCELLED"}
        history.set_seed(context.scene.aigc, entry.seed)
        return {"FINISHED"}


class AIGC_OT_restyle(_Generate, bpy.types.Operator):
    """Repaint the active object's image texture from its prompt, keeping its layout (image to image)"""

    bl_idname = "aigc.restyle"
    bl_label = "Restyle Image Texture"
    bl_options = {"REGISTER"}
    title = "Restyle"
    mode: _MODE

    def tasks(self, context: bpy.types.Context) -> list[plans.Task] | UserMessage:
        obj = context.object
        if obj is None or obj.type != "MESH":
            return message("nothing_selected", "No mesh object is active")
        task = plans.restyle_task(context.scene, obj)
        return task if isinstance(task, UserMessage) else [task]


class AIGC_OT_make_tileable(_Generate, bpy.types.Operator):
    """Make the Image Editor's image seamless: repaint a band around its edges, keep everything else"""

    bl_idname = "aigc.make_tileable"
    bl_label = "Make Tileable"
    bl_options = {"REGISTER"}
    title = "Make Tileable"
    mode: _MODE
    image: StringProperty(name="Image", default="",
                          description="The image to make tileable (empty: the one the Image Editor shows)")

    def tasks(self, context: bpy.types.Context) -> list[plans.Task] | UserMessage:
        image = bpy.data.images.get(self.image) if self.image else getattr(context.space_data, "image", None)
        if image is None:
            return UserMessage("No image to make tileable.", "Open an image in the Image Editor", "no_image")
        if image.size[0] * image.size[1] == 0 and image.packed_file is None and not image.filepath:
            return UserMessage(f"The image {image.name} has no pixels.", "Open or generate it first", "no_image")
        return [plans.tileable_task(context.scene, image)]


class AIGC_OT_cancel(bpy.types.Operator):
    """Stop the running generation (the sidecar stops after the current step)"""

    bl_idname = "aigc.cancel"
    bl_label = "Cancel"

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            runner.cancel()
        except Exception as exc:
            return _report(self, describe(exc))
        return {"FINISHED"}


class AIGC_OT_refresh_status(bpy.types.Operator):
    """Ask the sidecar for its model, device and queue"""

    bl_idname = "aigc.refresh_status"
    bl_label = "Refresh Status"
    mode: _MODE

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            runner.request_status(_client(), blocking=_blocking(self.mode))
        except Exception as exc:
            runner.STATE.status = None
            runner.STATE.status_error = describe(exc)
            return _report(self, runner.STATE.status_error)
        return {"FINISHED"}


class AIGC_OT_add_prompt(bpy.types.Operator):
    """Give the active object its own description (the custom property aigc_prompt)"""

    bl_idname = "aigc.add_prompt"
    bl_label = "Add Object Prompt"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.object is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        obj = context.object
        if scene_data.PROMPT_PROPERTY not in obj:
            obj[scene_data.PROMPT_PROPERTY] = ""
        return {"FINISHED"}


class AIGC_OT_reset_templates(bpy.types.Operator):
    """Put the prompt templates back to their defaults"""

    bl_idname = "aigc.reset_templates"
    bl_label = "Reset Templates"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.scene.aigc.object_template = OBJECT_TEMPLATE
        context.scene.aigc.world_template = WORLD_TEMPLATE
        return {"FINISHED"}


class AIGC_OT_start_sidecar(bpy.types.Operator):
    """Start aigc-bridge serve from the Python environment in the preferences, on a free local port"""

    bl_idname = "aigc.start_sidecar"
    bl_label = "Start Local Sidecar"
    mode: _MODE

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            sidecar = _new_sidecar()
            runner.start_sidecar(sidecar, blocking=_blocking(self.mode))
        except launcher.LauncherError as exc:
            return _report(self, exc.user_message)
        except Exception as exc:
            return _report(self, describe(exc))
        if sidecar.state == launcher.FAILED:
            return _report(self, runner.STATE.error)
        self.report({"INFO"}, runner.sidecar_summary())
        return {"FINISHED"}


class AIGC_OT_use_model(bpy.types.Operator):
    """Serve this model: the local sidecar started here restarts on it, in the background"""

    bl_idname = "aigc.use_model"
    bl_label = "Use Model"
    path: bpy.props.StringProperty(name="Path", description="The model package (empty: texture-mini)")
    mode: _MODE

    def execute(self, context: bpy.types.Context) -> set[str]:
        if runner.busy():
            return _report(self, message("busy_here", "A generation is running: the model cannot change now"))
        prefs = preferences.get()
        prefs.model_dir = self.path
        runner.STATE.status = None
        sidecar = runner.STATE.sidecar
        if sidecar is None or sidecar.poll() not in (launcher.STARTING, launcher.READY):
            self.report({"INFO"}, "The next generation starts the local sidecar on this model")
            return {"FINISHED"}
        try:
            runner.start_sidecar(_new_sidecar(), blocking=_blocking(self.mode))  # replaces the running one
        except launcher.LauncherError as exc:
            return _report(self, exc.user_message)
        except Exception as exc:
            return _report(self, describe(exc))
        if runner.STATE.sidecar.state == launcher.FAILED:
            return _report(self, runner.STATE.error)
        self.report({"INFO"}, runner.sidecar_summary())
        return {"FINISHED"}


class AIGC_OT_refresh_models(bpy.types.Operator):
    """Read the models folder again"""

    bl_idname = "aigc.refresh_models"
    bl_label = "Refresh Models"

    def execute(self, context: bpy.types.Context) -> set[str]:
        model_list.forget()
        return {"FINISHED"}


class AIGC_OT_export_model(bpy.types.Operator):
    """Export Source (a diffusers folder or hub id) into the models folder, in a background process of the
    Python environment (it needs aigc-bridge[export]); Blender keeps running"""

    bl_idname = "aigc.export_model"
    bl_label = "Export Model"

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = preferences.get()
        try:
            options = exporting.export_options(prefs.export_loras, prefs.export_embeddings, prefs.export_controlnets,
                                               bpy.path.abspath(prefs.export_config), prefs.export_family)
            exporting.start(bpy.path.abspath(prefs.python_env), prefs.export_source,
                            bpy.path.abspath(prefs.models_folder), prefs.export_name, options)
        except launcher.LauncherError as exc:
            exporting.STATE.message, exporting.STATE.failed = str(exc.user_message), True
            return _report(self, exc.user_message)
        runner._follow(False)  # the timer follows it (scripts pump runner.tick)
        self.report({"INFO"}, f"Exporting {prefs.export_source}…")
        return {"FINISHED"}


class AIGC_OT_cancel_export(bpy.types.Operator):
    """Stop the running export"""

    bl_idname = "aigc.cancel_export"
    bl_label = "Cancel Export"

    def execute(self, context: bpy.types.Context) -> set[str]:
        exporting.cancel()
        return {"FINISHED"}


class AIGC_MT_models(bpy.types.Menu):
    """The models to switch to (Preferences > Models folder, plus texture-mini)"""

    bl_idname = "AIGC_MT_models"
    bl_label = "Model"

    def draw(self, context: bpy.types.Context) -> None:
        prefs = preferences.get()
        for info in model_list.scan(bpy.path.abspath(prefs.models_folder)).models:
            if not info.problem:
                self.layout.operator("aigc.use_model", text=info.name).path = info.path


class AIGC_OT_stop_sidecar(bpy.types.Operator):
    """Stop the local sidecar started here, freeing its GPU memory"""

    bl_idname = "aigc.stop_sidecar"
    bl_label = "Stop Local Sidecar"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return runner.STATE.sidecar is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            if runner.busy():
                runner.reset()
            runner.stop_sidecar_process()
            runner.STATE.status = None
        except Exception as exc:
            return _report(self, describe(exc))
        self.report({"INFO"}, "Local sidecar stopped")
        return {"FINISHED"}


CLASSES = (AIGC_OT_texture_selected, AIGC_OT_texture_from_shape, AIGC_OT_generate_backdrop, AIGC_OT_restyle,
           AIGC_OT_make_tileable,
           AIGC_OT_history_rerun, AIGC_OT_history_recall, AIGC_OT_history_use_seed, AIGC_OT_cancel,
           AIGC_OT_refresh_status, AIGC_OT_add_prompt, AIGC_OT_reset_templates, AIGC_OT_start_sidecar,
           AIGC_OT_use_model, AIGC_OT_refresh_models, AIGC_OT_export_model, AIGC_OT_cancel_export, AIGC_MT_models,
           AIGC_OT_stop_sidecar)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
