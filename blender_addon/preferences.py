"""Add-on preferences: which sidecar (a local one by default, or an endpoint with keys), how to start a
local one (the runtime bundled with the extension, or a Python environment the user names), the models it
can serve (a models folder, plus texture-mini) and exporting a model into that folder."""

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty

from . import connection, model_list

ADDON = __package__


class AIGC_Preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON

    connection_mode: EnumProperty(name="Sidecar", default=connection.LOCAL, items=[
        (connection.LOCAL, "Local", "The sidecar started here, or the one whose connection file is set below"),
        (connection.ENDPOINT, "Endpoint", "A sidecar at an address, e.g. on a render box, with its keys")])
    connection_file: StringProperty(
        name="Connection file", subtype="FILE_PATH", default="",
        description="File written by `aigc-bridge serve --connection-file` (empty: ~/.aigc/sidecar.json); "
                    "ignored while a sidecar started here is running")
    endpoint: StringProperty(name="Endpoint", default="tcp://127.0.0.1:5555",
                             description="tcp://HOST:PORT or ipc:///path")
    key_file: StringProperty(name="Key file", subtype="FILE_PATH", default="",
                             description="The HMAC key file the sidecar was started with (--key-file)")
    server_public_key: StringProperty(name="Server public key", default="",
                                      description="The server's Curve public key (Z85) or its .key file")
    client_key_file: StringProperty(name="Client key", subtype="FILE_PATH", default="",
                                    description="Your .key_secret file made by `aigc-bridge keys`")
    timeout_s: FloatProperty(name="Timeout", default=10.0, min=0.5, max=600.0, unit="TIME_ABSOLUTE",
                             description="Seconds of silence after which the sidecar counts as gone")
    python_env: StringProperty(name="Python environment", subtype="DIR_PATH", default="",
                               description="Empty: the runtime bundled with the extension, on Blender's own "
                               "Python. Or the folder of a Python environment with aigc-bridge installed (e.g. "
                               "aigc-bridge[gpu] for CUDA)")
    model_dir: StringProperty(name="Model", subtype="DIR_PATH", default="",
                              description="The model package the local sidecar serves (empty: the default model, "
                              "texture-mini or $AIGC_BRIDGE_MODEL); pick one from the Models list")
    models_folder: StringProperty(name="Models folder", subtype="DIR_PATH", default="",
                                  description="A folder of model packages (each made by `aigc-bridge export`): "
                                  "they are listed here and in the panel")
    export_source: StringProperty(name="Source", default="",
                                  description="A diffusers folder or a Hugging Face hub id to export")
    export_name: StringProperty(name="Name", default="",
                                description="The new package's folder name in the models folder")
    # The exporter's own options (docs/use-your-own-models.md, docs/conditioning.md), as on the command line;
    # lists are separated by ";"
    export_loras: StringProperty(name="LoRAs", default="",
                                 description="LoRA files fused into the weights, FILE[:WEIGHT] separated by ;")
    export_embeddings: StringProperty(name="Embeddings", default="",
                                      description="Textual-inversion embeddings, FILE[:TOKEN] separated by ;")
    export_controlnets: StringProperty(name="ControlNets", default="",
                                       description="Diffusers ControlNets exported beside the model, ID_OR_PATH[=NAME] "
                                                   "separated by ;")
    export_config: StringProperty(name="Config", subtype="DIR_PATH", default="",
                                  description="Single-file checkpoints: a diffusers folder of the same family to take "
                                              "the configs from (empty: the family's hub repo)")
    export_family: StringProperty(name="Family", default="",
                                  description="Single-file checkpoints: the family where the tensors cannot tell "
                                              "(sd1, sd2, sd2-v, sdxl, ... as `aigc-bridge export --help` lists; "
                                              "empty: detected)")
    provider: EnumProperty(name="Device", default="auto", items=[
        ("auto", "Auto", "Best available"), ("cuda", "CUDA", "NVIDIA GPU"), ("dml", "DirectML", "Windows GPU"),
        ("coreml", "Core ML", "Apple"), ("cpu", "CPU", "Slow, always works")])
    force_timer: BoolProperty(
        name="Non-blocking in background mode", default=False,
        description="Use the timer path even when Blender runs in background mode (scripts then pump "
                    "runner.tick themselves)")

    def draw(self, context: bpy.types.Context) -> None:
        from . import runner

        layout = self.layout
        layout.prop(self, "connection_mode", expand=True)
        if self.connection_mode == connection.LOCAL:
            box = layout.box()
            box.label(text="Local sidecar", icon="CONSOLE")
            box.prop(self, "python_env")
            if not self.python_env.strip():
                box.label(text="Runtime: bundled with the extension (Blender's Python, isolated)", icon="PACKAGE")
            box.prop(self, "provider")
            row = box.row()
            row.operator("aigc.start_sidecar", icon="PLAY")
            row.operator("aigc.stop_sidecar", icon="PAUSE")
            box.label(text=runner.sidecar_summary())
            draw_models(self, box.box())
            draw_export(self, box.box())
            layout.prop(self, "connection_file")
        else:
            layout.prop(self, "endpoint")
            layout.prop(self, "key_file")
            layout.prop(self, "server_public_key")
            layout.prop(self, "client_key_file")
        layout.prop(self, "timeout_s")
        layout.prop(self, "force_timer")


def draw_models(prefs: AIGC_Preferences, box: bpy.types.UILayout) -> None:
    """The models folder and what it holds, each with a button to serve it."""
    box.label(text="Models", icon="FILE_3D")
    row = box.row(align=True)
    row.prop(prefs, "models_folder")
    row.operator("aigc.refresh_models", text="", icon="FILE_REFRESH")
    listing = model_list.scan(bpy.path.abspath(prefs.models_folder))
    if listing.error is not None:
        col = box.column(align=True)
        col.alert = True
        col.label(text=listing.error.text, icon="ERROR")
        col.label(text=f"Fix: {listing.error.fix}.", icon="INFO")
    active = bpy.path.abspath(prefs.model_dir).rstrip("/\\")
    for info in listing.models:
        row = box.row()
        chosen = info.path.rstrip("/\\") == active
        row.label(text=info.summary, icon="CHECKMARK" if chosen else ("ERROR" if info.problem else "BLANK1"))
        sub = row.row()
        sub.enabled = not chosen
        op = sub.operator("aigc.use_model", text="Use")
        op.path = info.path


def draw_export(prefs: AIGC_Preferences, box: bpy.types.UILayout) -> None:
    """Export a diffusers folder or hub id into the models folder, in a background process."""
    from . import exporting

    box.label(text="Export a model into the models folder (needs Python environment with aigc-bridge[export])",
              icon="EXPORT")
    box.prop(prefs, "export_source")
    box.prop(prefs, "export_name")
    col = box.column(align=True)
    for name in ("export_loras", "export_embeddings", "export_controlnets", "export_config", "export_family"):
        col.prop(prefs, name)
    job = exporting.STATE.job
    if job is not None and job.running:
        box.progress(factor=job.fraction, type="BAR", text=job.line or "Exporting…")
        box.operator("aigc.cancel_export", icon="CANCEL")
    else:
        box.operator("aigc.export_model", icon="EXPORT")
        if exporting.STATE.message:
            box.label(text=exporting.STATE.message, icon="ERROR" if exporting.STATE.failed else "INFO")


def get() -> AIGC_Preferences:
    """The preferences (the add-on must be enabled through Blender, which creates them)."""
    return bpy.context.preferences.addons[ADDON].preferences


def sidecar_folder() -> str:
    """Where a local sidecar's connection file and log go: the extension's user folder, or Blender's
    config folder for a plain add-on install."""
    try:
        return bpy.utils.extension_path_user(ADDON, path="sidecar", create=True)
    except (ValueError, RuntimeError):
        return bpy.utils.user_resource("CONFIG", path=os.path.join("aigc_bridge", "sidecar"), create=True)


def settings(prefs: AIGC_Preferences, local_connection_file: str | None = None) -> connection.Settings:
    """The connection settings; ``local_connection_file``: the running local sidecar's file, which wins."""
    return connection.Settings(
        mode=prefs.connection_mode,
        connection_file=local_connection_file or bpy.path.abspath(prefs.connection_file),
        endpoint=prefs.endpoint, key_file=bpy.path.abspath(prefs.key_file),
        server_public_key=prefs.server_public_key, client_key_file=bpy.path.abspath(prefs.client_key_file),
        timeout_s=prefs.timeout_s)


CLASSES = (AIGC_Preferences,)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
