"""The scene -> prompt composer on realistic scenes: Blender's .001 suffixes, default names, empty and
unicode names, editable templates; the same input always gives the same prompts."""

from __future__ import annotations

import pytest

from aigc_bridge.errors import AigcError
from aigc_bridge.prompts import (
    OBJECT_TEMPLATE,
    clean_name,
    compose_object_prompt,
    compose_prompts,
    compose_world_prompt,
    render_template,
)

HARBOUR = {
    "style": "weathered, overcast, muted colours",
    "world": "foggy harbour at dawn",
    "objects": [
        {"name": "Crate.001", "material": "Wood_Old", "collection": "Props", "prompt": ""},
        {"name": "Crate.002", "material": "Wood_Old.001", "collection": "Props"},
        {"name": "SM_RustyBarrel_02", "material": "Material.004", "collection": "Collection"},
        {"name": "Bollard", "material": "Bollard", "collection": "Dock", "prompt": "cast iron mooring bollard"},
        {"name": "", "material": "", "collection": ""},
        {"name": "木箱.003", "material": "Holz", "collection": "Requisiten"},
        {"name": "Küchen-Stuhl", "material": "Eiche_geölt", "collection": None},
        {"name": "Cube", "material": None},
    ],
}


@pytest.mark.parametrize("name, cleaned", [
    ("Crate.001", "crate"),
    ("Crate", "crate"),
    ("Crate.0042", "crate"),
    ("Crate.1", "crate"),                     # a lone digit is a number word, dropped
    ("SM_RustyBarrel_02", "sm rusty barrel"),
    ("rock-wall.big", "rock wall big"),
    ("HTTPServerRack", "http server rack"),
    ("Material.003", ""),                     # Blender's default names describe nothing
    ("Collection", ""),
    ("", ""),
    ("   ", ""),
    (None, ""),
    ("木箱.003", "木箱"),
    ("Küchen-Stuhl", "küchen stuhl"),
    ("Ｃｒａｔｅ", "ｃｒａｔｅ"),              # full-width letters kept (NFC, not NFKC: no folding)
    ("Cafe\u0301", "café"),                  # combining accent normalised to one code point
    ("tab\there\nnewline\x00", "tab here newline"),
])
def test_clean_name(name, cleaned) -> None:
    assert clean_name(name) == cleaned


def test_realistic_scene() -> None:
    prompts = dict(compose_prompts(HARBOUR)["objects"])
    tail = "weathered, overcast, muted colours, detailed surface texture"
    assert prompts["Crate.001"] == f"crate, made of wood old, props, {tail}"
    assert prompts["Crate.002"] == prompts["Crate.001"]           # duplicates describe the same thing
    assert prompts["SM_RustyBarrel_02"] == f"sm rusty barrel, {tail}"  # default material/collection dropped
    # the object's own prompt is the subject; a material named like the object is not repeated
    assert prompts["Bollard"] == f"cast iron mooring bollard, made of bollard, dock, {tail}"
    assert prompts[""] == f"object, {tail}"                        # empty name: a neutral subject
    assert prompts["木箱.003"] == f"木箱, made of holz, requisiten, {tail}"
    assert prompts["Küchen-Stuhl"] == f"küchen stuhl, made of eiche geölt, {tail}"
    assert prompts["Cube"] == f"cube, {tail}"
    assert compose_prompts(HARBOUR)["world"] == (
        "foggy harbour at dawn, weathered, overcast, muted colours, 360 degree panorama, equirectangular")


def test_subject_equal_to_material_is_not_repeated() -> None:
    scene = {"objects": [{"name": "Brick.001", "material": "Brick"}]}
    assert compose_object_prompt(scene, scene["objects"][0]) == "brick, detailed surface texture"


def test_deterministic_and_order_preserving() -> None:
    first = compose_prompts(HARBOUR)
    again = compose_prompts({**HARBOUR, "objects": [dict(o) for o in HARBOUR["objects"]]})
    assert first == again
    assert [name for name, _ in first["objects"]] == [o["name"] for o in HARBOUR["objects"]]


def test_empty_scene() -> None:
    assert compose_prompts({}) == {"objects": [], "world": "360 degree panorama, equirectangular"}
    assert compose_object_prompt({}, {}) == "object, detailed surface texture"


def test_editable_template() -> None:
    scene = {"style": "pixel art", "objects": [{"name": "Shield.001", "material": "Steel"}]}
    template = "{style} {name}, {material} plates, no text"
    assert compose_object_prompt(scene, scene["objects"][0], template) == "pixel art shield, steel plates, no text"
    # a part whose fields are all empty disappears; literal parts stay
    assert render_template("a {material}, b, {collection} c", {"material": ""}) == "b"
    assert compose_world_prompt({"world": "desert"}, "{world} at noon, {style}") == "desert at noon"


@pytest.mark.parametrize("template", ["{colour}", "{subject", "{0}", "{}"])
def test_bad_template_names_the_field(template) -> None:
    with pytest.raises(AigcError) as err:
        compose_object_prompt({}, {"name": "crate"}, template)
    assert err.value.code == "invalid_template" and err.value.field == "template"


@pytest.mark.parametrize("scene, field", [
    ({"style": 3}, "style"),
    ({"objects": "crate"}, "objects"),
    ({"objects": [{"name": ["x"]}]}, "name"),
    ([], "scene"),
])
def test_bad_scene_description(scene, field) -> None:
    with pytest.raises(AigcError) as err:
        compose_prompts(scene)
    assert err.value.code == "invalid_scene" and err.value.field == field


def test_long_custom_prompt_is_bounded() -> None:
    prompt = compose_object_prompt({}, {"name": "x", "prompt": "moss " * 5000})
    assert len(prompt) < 2100 and prompt.endswith("detailed surface texture")


def test_default_template_fields_are_documented() -> None:
    for field in ("subject", "material", "collection", "style"):
        assert "{" + field + "}" in OBJECT_TEMPLATE
