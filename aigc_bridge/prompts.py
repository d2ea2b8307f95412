"""Scene description -> prompts: the one composer that the Blender add-on and the batch runner share.

Standard library only, and no bpy: the add-on turns its scene into the plain dict below, a batch job file
(or a .blend read by the batch runner) produces the same dict, and both get the same prompts, byte for byte.

A scene description::

    {
        "style": "weathered sci-fi, muted colours",   # one line for the whole scene
        "world": "overcast sky above a harbour",       # what the backdrop shows
        "objects": [
            {"name": "Crate.001", "material": "Wood_Old", "collection": "Props",
             "prompt": "oak crate with iron bands"},   # prompt: the object's own description, optional
        ],
    }

Every key is optional and every value a string (None counts as empty). Names are cleaned the way people read
them: Blender's numeric suffix goes ("Crate.001" -> "crate"), separators and camelCase become spaces,
Blender's default names ("Material", "Collection") say nothing and are dropped.

Templates are comma-separated parts with ``{field}`` placeholders; a part whose placeholders are all empty
is left out, so "made of {material}" disappears for an object without a material. Fields: ``subject`` (the
object's prompt, else its cleaned name), ``name``, ``prompt``, ``material``, ``collection``, ``style``,
``world``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping

from .errors import AigcError

__all__ = [
    "FIELDS",
    "OBJECT_TEMPLATE",
    "WORLD_TEMPLATE",
    "clean_name",
    "compose_object_prompt",
    "compose_prompts",
    "compose_world_prompt",
    "object_fields",
    "render_template",
]

OBJECT_TEMPLATE = "{subject}, made of {material}, {collection}, {style}, detailed surface texture"
WORLD_TEMPLATE = "{world}, {style}, 360 degree panorama, equirectangular"
FIELDS = ("subject", "name", "prompt", "material", "collection", "style", "world")
FALLBACK_SUBJECT = "object"  # an object whose name cleans to nothing and that has no prompt
MAX_FIELD_CHARS = 2000  # a runaway custom property must not swamp the prompt (the server allows 100 000)

# Names Blender (or a DCC export) gives by default: they describe nothing, so they never reach a prompt.
GENERIC_NAMES = frozenset({"material", "collection", "scene collection", "default", "default material",
                           "none", "untitled", "mat", "new material"})

_SUFFIX = re.compile(r"\.\d{3,}$")                 # Blender's duplicate suffix: .001, .0042
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\s_\-.:/\\|]+")
_NUMBER = re.compile(r"^\d+$")
_SPACES = re.compile(r"\s+")


def _text(value: object, field: str) -> str:
    """A description value as clean single-line text; anything but str/None is the caller's bug."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AigcError("invalid_scene", f"{field} must be text, got {type(value).__name__}", field)
    value = unicodedata.normalize("NFC", value)
    value = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in value)  # controls, odd spaces
    return _SPACES.sub(" ", value).strip()[:MAX_FIELD_CHARS].strip()


def clean_name(name: str | None) -> str:
    """A datablock name as words: "Crate.001" -> "crate", "SM_OldBarrel_02" -> "sm old barrel",
    "Küchen-Stuhl" -> "küchen stuhl"; Blender's default names ("Material.003") -> ""."""
    text = _text(name, "name")
    text = _SUFFIX.sub("", text)
    text = _CAMEL.sub(" ", text)
    words = [w for w in _SEPARATORS.split(text) if w and not _NUMBER.match(w)]
    cleaned = " ".join(words).lower()
    return "" if cleaned in GENERIC_NAMES else cleaned


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Fill a template part by part, dropping parts whose placeholders are all empty (see module doc)."""
    if not isinstance(template, str):
        raise AigcError("invalid_template", "the template must be text", "template")
    parts = []
    for raw in template.split(","):
        try:
            pieces = list(string.Formatter().parse(raw))
        except ValueError as exc:
            raise AigcError("invalid_template", f"template part {raw.strip()!r}: {exc}", "template") from None
        names = [name for _, name, _, _ in pieces if name is not None]
        for name in names:
            if name not in FIELDS:
                raise AigcError("invalid_template", f"unknown field {{{name}}} in the template; use "
                                + ", ".join("{" + f + "}" for f in FIELDS), "template")
        if names and not any(values.get(name) for name in names):
            continue
        text = "".join(literal + (values.get(name) or "" if name is not None else "")
                       for literal, name, _, _ in pieces)
        text = _SPACES.sub(" ", text).strip()
        if text:
            parts.append(text)
    return ", ".join(parts)


def _scene_text(scene: Mapping, key: str) -> str:
    if not isinstance(scene, Mapping):
        raise AigcError("invalid_scene", "a scene description is a dict", "scene")
    return _text(scene.get(key), key)


def object_fields(scene: Mapping, obj: Mapping) -> dict[str, str]:
    """The template fields of one object; a material or collection that repeats the subject is dropped."""
    if not isinstance(obj, Mapping):
        raise AigcError("invalid_scene", "an object description is a dict", "objects")
    name = clean_name(obj.get("name"))
    prompt = _text(obj.get("prompt"), "prompt")
    subject = prompt or name or FALLBACK_SUBJECT
    seen = {subject.casefold()}
    extra = {}
    for key in ("material", "collection"):
        value = clean_name(obj.get(key))
        extra[key] = "" if value.casefold() in seen else value
        seen.add(value.casefold())
    return {"subject": subject, "name": name, "prompt": prompt, **extra,
            "style": _scene_text(scene, "style"), "world": _scene_text(scene, "world")}


def compose_object_prompt(scene: Mapping, obj: Mapping, template: str | None = None) -> str:
    """The texture prompt for one object of ``scene`` (``obj`` need not be in ``scene["objects"]``)."""
    return render_template(template or OBJECT_TEMPLATE, object_fields(scene, obj))


def compose_world_prompt(scene: Mapping, template: str | None = None) -> str:
    """The backdrop prompt: the world description in the scene's style."""
    values = {name: "" for name in FIELDS}
    values.update(style=_scene_text(scene, "style"), world=_scene_text(scene, "world"))
    values["subject"] = values["world"]
    return render_template(template or WORLD_TEMPLATE, values)


def compose_prompts(scene: Mapping, object_template: str | None = None,
                    world_template: str | None = None) -> dict:
    """Every prompt of a scene: ``{"objects": [(name, prompt), ...], "world": prompt}``, objects in the
    description's order (names as given, so callers can map prompts back to their objects)."""
    _scene_text(scene, "style")  # checks that scene is a dict
    objects = scene.get("objects") or []
    if not isinstance(objects, list):
        raise AigcError("invalid_scene", "objects must be a list of dicts", "objects")
    return {"objects": [(_text(o.get("name"), "name") if isinstance(o, Mapping) else "",
                         compose_object_prompt(scene, o, object_template)) for o in objects],
            "world": compose_world_prompt(scene, world_template)}
