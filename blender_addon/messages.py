"""Errors as people read them: what went wrong and what to do about it (bpy-free).

Every failure the add-on can meet (client errors by code, a refused endpoint, a sidecar that will not
start, a bug of ours) becomes a UserMessage, which the panel shows and the operators report. Nothing is
ever raised into Blender's UI or timer loop.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

PREFS = "Edit > Preferences > Add-ons > AIGC Bridge"

_FIXES = {
    "unavailable": f"Start the sidecar ({PREFS} > Start local sidecar) or check the endpoint there",
    "connection_file": f"Start the local sidecar ({PREFS}), or point Connection file at the file "
                       "`aigc-bridge serve --connection-file` wrote",
    "bad_endpoint": "Use tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555) or ipc:///path",
    "bad_signature": f"Use the key from the sidecar's connection file ({PREFS} > Key file)",
    "unauthorized": f"Set the server's public key and your client key ({PREFS}); the server must list "
                    "your public key in --authorized-keys",
    "curve_key": f"Point Client key at the .key_secret file made by `aigc-bridge keys` ({PREFS})",
    "busy": "Wait for the queued jobs to finish, then try again",
    "no_model": f"Restart the sidecar with a model folder ({PREFS} > Model folder)",
    "shutting_down": "Start the sidecar again",
    "model_package": "Check the model folder: it must be a package made by `aigc-bridge export`",
    "inference_failed": "See the sidecar's log; try a smaller resolution or fewer images",
    "insufficient_memory": "Set Generate at to Model's size and pick the Texture Size you want: the texture is "
                           "generated at the model's size and resized",
    "internal": "See the sidecar's log and report it",
    "sidecar_start": f"Check Python environment and Model folder ({PREFS})",
    "no_runtime": "Install the extension zip made for this platform and Blender version, or set Python "
                  f"environment ({PREFS}) to one with `pip install 'aigc-bridge[cpu]'` (or [gpu])",
    "sidecar_model": f"Pick another model ({PREFS} > Models), or re-export this one with `aigc-bridge export`",
    "models_folder": f"Choose an existing folder as Models folder ({PREFS}), or leave it empty",
    "export": f"Set Python environment ({PREFS}) to one with `pip install 'aigc-bridge[export]'`, and check "
              "the source (a diffusers folder or a hub id)",
    "history": "Generate something first: every generation is recorded in the .blend",
    "invalid_scene": "Check the names and prompts in the AIGC panel",
    "invalid_template": "Fix the template in the AIGC panel's Templates section (or reset it)",
    "busy_here": "Wait for the running generation, or cancel it",
    "nothing_selected": "Select one or more mesh objects in the 3D View",
    "no_camera": "Add a camera, or set the backdrop to World",
}


@dataclass(frozen=True)
class UserMessage:
    """One line for the panel and the report; ``fix`` says what to do, when we know."""

    text: str
    fix: str = ""
    code: str = ""

    def __str__(self) -> str:
        return f"{self.text} Fix: {self.fix}." if self.fix else self.text


def message(code: str, text: str) -> UserMessage:
    """A message of the add-on's own (``code`` picks the fix)."""
    return UserMessage(text, _FIXES.get(code, ""), code)


def describe(exc: BaseException, endpoint: str = "") -> UserMessage:
    """Turn any exception into a UserMessage; unexpected ones keep their traceback on the console."""
    if isinstance(getattr(exc, "user_message", None), UserMessage):
        return exc.user_message  # already worded for people (launcher errors)
    code = getattr(exc, "code", None)
    text = getattr(exc, "message", None) or str(exc)
    if code is None:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        return UserMessage(f"Unexpected error: {type(exc).__name__}: {exc}",
                           "See the system console (Window > Toggle System Console) and report it", "internal")
    if code == "unavailable":
        where = f" at {endpoint}" if endpoint else ""
        return UserMessage(f"The sidecar is not running or not answering{where}.", _FIXES[code], code)
    if code == "cancelled":
        return UserMessage("Cancelled.", "", code)
    if code == "invalid_request":
        field = getattr(exc, "field", None)
        return UserMessage(f"The sidecar refused the request: {text}",
                           f"Change {field} in the AIGC panel" if field else "Check the AIGC panel's settings",
                           code)
    if code == "busy":
        after = getattr(exc, "retry_after_s", None)
        wait = f" (about {after:.0f} s)" if isinstance(after, (int, float)) else ""
        return UserMessage(f"The sidecar's queue is full{wait}.", _FIXES[code], code)
    return UserMessage(text.rstrip(".") + ".", _FIXES.get(code, "See the sidecar's log"), code)
