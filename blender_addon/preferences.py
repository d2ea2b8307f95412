"""Add-on preferences: which sidecar (a local one by default, or an endpoint with keys) and how to start a
local one from a Python environment that has aigc-bridge[gpu]."""

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty

from . import connection

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
                               description="Folder of a Python environment with aigc-bridge[gpu] installed")
    model_dir: StringProperty(name="Model folder", subtype="DIR_PATH", default="",
                              description="A model package made by `aigc-bridge export` (empty: the default "
                              "model, texture-mini or $AIGC_BRIDGE_MODEL)")
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
            box.prop(self, "model_dir")
            box.prop(self, "provider")
            row = box.row()
            row.operator("aigc.start_sidecar", icon="PLAY")
            row.operator("aigc.stop_sidecar", icon="PAUSE")
            box.label(text=runner.sidecar_summary())
            layout.prop(self, "connection_file")
        else:
            layout.prop(self, "endpoint")
            layout.prop(self, "key_file")
            layout.prop(self, "server_public_key")
            layout.prop(self, "client_key_file")
        layout.prop(self, "timeout_s")
        layout.prop(self, "force_timer")


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
