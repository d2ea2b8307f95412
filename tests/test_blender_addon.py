"""The Blender extension in real Blender (the bpy 5.0 module, in this process) against real sidecars (the
`aigc-bridge serve` subprocess with the tiny model).

The add-on is enabled the way Blender enables an installed extension (``bl_ext.user_default.aigc_bridge``,
the source folder linked into a throwaway user repository). bpy as a module never fires timers, so the tests
call the runner's timer function, ``runner.tick``, in a loop as Blender would, and time every call. Panels
cannot be drawn without a window: ``draw`` runs against a recording layout that checks every property,
operator and icon it is given against Blender's RNA.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from .sidecar import SidecarProcess

if importlib.util.find_spec("bpy") is None:
    pytest.skip("bpy is not installed", allow_module_level=True)

_HOME = tempfile.mkdtemp(prefix="aigc-blender-test-")
atexit.register(shutil.rmtree, _HOME, True)
os.environ["BLENDER_USER_RESOURCES"] = os.path.join(_HOME, "user")  # never the developer's Blender config
os.environ["MESA_SHADER_CACHE_DIR"] = os.path.join(_HOME, "mesa")

import bpy  # noqa: E402, I001  (after the environment above)
import addon_utils  # noqa: E402  (Blender's own module, importable once bpy is)

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "blender_addon"
ADDON = "bl_ext.user_default.aigc_bridge"
LONG = 500          # steps of a job that is still running when a test acts on it
TIMER_LIMIT_S = 0.1
ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def addon():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    repo = next(r for r in bpy.context.preferences.extensions.repos if r.module == "user_default")
    os.makedirs(repo.directory, exist_ok=True)
    link = os.path.join(repo.directory, "aigc_bridge")
    if not os.path.lexists(link):
        os.symlink(SOURCE, link)

    def fail(exc: BaseException) -> None:
        raise exc

    module = addon_utils.enable(ADDON, default_set=True, handle_error=fail)
    assert module is not None
    yield SimpleNamespace(module=module, runner=sys.modules[f"{ADDON}.runner"],
                          panel=sys.modules[f"{ADDON}.panel"], launcher=sys.modules[f"{ADDON}.launcher"],
                          prefs=bpy.context.preferences.addons[ADDON].preferences)
    addon_utils.disable(ADDON, default_set=True)


@pytest.fixture(scope="module")
def shared(tiny_sd, tmp_path_factory):
    """The sidecar the tests that leave it running share."""
    server = SidecarProcess(tmp_path_factory.mktemp("blender-sidecar"), tiny_sd)
    yield server
    server.stop()


@contextlib.contextmanager
def fresh_file(addon, sidecar: SidecarProcess, timeout_s: float):
    """An empty file, fresh runner state, preferences pointing at ``sidecar``; the run and timer stopped after."""
    addon.runner.reset()
    addon.runner.stop_sidecar_process()
    addon.runner.STATE = addon.runner.State()
    bpy.ops.wm.read_homefile(use_empty=True)
    prefs = addon.prefs
    prefs.connection_mode = "LOCAL"
    prefs.connection_file = str(sidecar.connection_file)
    prefs.timeout_s = timeout_s
    prefs.force_timer = False
    try:
        yield bpy.context.scene.aigc
    finally:
        addon.runner.reset()
        if bpy.app.timers.is_registered(addon.runner.tick):
            bpy.app.timers.unregister(addon.runner.tick)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A sidecar with the shipped texture-mini (no --model), for the modules whose tests need a real model."""
    server = SidecarProcess(tmp_path_factory.mktemp("texture-mini-sidecar"), None)
    yield server
    server.stop()


@pytest.fixture
def scene(addon, shared):
    """An empty file, fresh runner state, preferences pointing at the shared sidecar; returns helpers."""
    with fresh_file(addon, shared, 2.0) as settings:
        settings.texture_size = settings.backdrop_size = "NATIVE"  # the tiny model's own 64 px / 128 x 64
        settings.steps = 4
        settings.style = "weathered sci-fi"
        settings.world_description = "foggy harbour at dawn"
        yield addon


def two_objects() -> tuple[bpy.types.Object, bpy.types.Object]:
    """A crate with a material in a collection (and UVs), and a barrel without UVs; both selected."""
    bpy.ops.mesh.primitive_cube_add()
    crate = bpy.context.object
    crate.name = "Crate.001"
    crate.data.materials.append(bpy.data.materials.new("Wood_Old"))
    props = bpy.data.collections.new("Props")
    bpy.context.scene.collection.children.link(props)
    props.objects.link(crate)
    bpy.context.scene.collection.objects.unlink(crate)
    bpy.ops.mesh.primitive_cylinder_add(calc_uvs=False, location=(3, 0, 0))
    barrel = bpy.context.object
    barrel.name = "Barrel"
    barrel["aigc_prompt"] = "rusty oil barrel"
    assert not barrel.data.uv_layers
    for obj in (crate, barrel):
        obj.select_set(True)
    return crate, barrel


def pump(runner, timeout: float = 60.0, until=None) -> list[float]:
    """Blender's timer loop, in a test: call ``tick`` after the delay it asks for; return each call's time."""
    durations = []
    deadline = time.monotonic() + timeout
    while True:
        started = time.perf_counter()
        delay = runner.tick()
        durations.append(time.perf_counter() - started)
        if delay is None or (until is not None and until()):
            return durations
        if time.monotonic() > deadline:
            raise AssertionError("the timer function never finished")
        time.sleep(delay)


def pixels(image: bpy.types.Image) -> np.ndarray:
    """An 8-bit image's pixels as uint8, top row first (Blender stores the bottom row first)."""
    w, h = image.size
    buf = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(buf)
    return np.round(buf.reshape(h, w, 4)[::-1] * 255).astype(np.uint8)


def decoded(png: bytes, mode: str = "RGBA") -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert(mode))


class Recorder:
    """Stands in for UILayout (which only exists while Blender draws a region): records the calls and
    checks each property, operator and icon against Blender's RNA, as real drawing would."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.alert = False
        self.enabled = True
        self.active = True
        self.scale_y = 1.0

    def _child(self, kind: str, **_kw) -> Recorder:
        self.log.append((kind,))
        return Recorder(self.log)

    def row(self, **kw) -> Recorder:
        return self._child("row", **kw)

    def column(self, **kw) -> Recorder:
        return self._child("column", **kw)

    def box(self) -> Recorder:
        return self._child("box")

    def _icon(self, icon: str) -> None:
        assert icon in ICONS, f"unknown icon {icon}"

    def label(self, *, text: str = "", icon: str = "NONE") -> None:
        self._icon(icon)
        self.log.append(("label", text, icon))

    def prop(self, data, name: str, *, text: str | None = None, icon: str = "NONE", expand: bool = False) -> None:
        if name.startswith('["'):
            assert name[2:-2] in data, f"no custom property {name}"
        else:
            assert name in data.bl_rna.properties, f"{data.bl_rna.identifier} has no property {name}"
        self._icon(icon)
        self.log.append(("prop", name, text))

    def operator(self, idname: str, *, text: str | None = None, icon: str = "NONE") -> SimpleNamespace:
        category, name = idname.split(".")
        assert hasattr(bpy.types, f"{category.upper()}_OT_{name}"), f"no operator {idname}"
        self._icon(icon)
        self.log.append(("operator", idname, text))
        return SimpleNamespace()

    def menu(self, menu: str, *, text: str = "", icon: str = "NONE") -> None:
        assert hasattr(bpy.types, menu), f"no menu {menu}"
        self._icon(icon)
        self.log.append(("menu", menu, text))

    def template_list(self, listtype: str, list_id: str, data, propname: str, active_data, active_propname: str,
                      rows: int = 5) -> None:
        assert hasattr(bpy.types, listtype), f"no UIList {listtype}"
        assert propname in data.bl_rna.properties and active_propname in active_data.bl_rna.properties
        self.log.append(("template_list", listtype, propname))

    def progress(self, *, factor: float, type: str, text: str) -> None:
        assert 0.0 <= factor <= 1.0 and type in {"BAR", "RING"}
        self.log.append(("progress", factor, text))


def draw(addon) -> list:
    log: list = []
    addon.panel.VIEW3D_PT_aigc.draw(SimpleNamespace(layout=Recorder(log)), bpy.context)
    return log


def labels(log: list) -> str:
    """The labels' text as one line (the panel wraps long text over several labels)."""
    return " ".join(entry[1] for entry in log if entry[0] == "label")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- registration and drawing -----------------------------------------------------------------------------


def test_registers_and_unregisters_cleanly(addon) -> None:
    names = ["AIGC_OT_texture_selected", "AIGC_OT_generate_backdrop", "AIGC_OT_cancel", "AIGC_OT_refresh_status",
             "AIGC_OT_start_sidecar", "AIGC_OT_stop_sidecar", "VIEW3D_PT_aigc"]
    settings = sys.modules[f"{ADDON}.properties"].AIGC_SceneSettings
    assert addon_utils.check(ADDON) == (True, True)
    assert all(hasattr(bpy.types, n) for n in names) and "aigc" in bpy.types.Scene.bl_rna.properties
    assert settings.is_registered and bpy.types.VIEW3D_PT_aigc.bl_category == "AIGC"
    addon_utils.disable(ADDON, default_set=True)
    assert not any(hasattr(bpy.types, n) for n in names) and "aigc" not in bpy.types.Scene.bl_rna.properties
    assert not settings.is_registered
    assert addon_utils.check(ADDON) == (False, False)
    addon_utils.enable(ADDON, default_set=True)  # and again: nothing left behind blocks a second register
    assert all(hasattr(bpy.types, n) for n in names)
    addon.prefs = bpy.context.preferences.addons[ADDON].preferences
    for name in ("runner", "panel", "launcher"):
        setattr(addon, name, sys.modules[f"{ADDON}.{name}"])


def test_panel_draws_every_state(scene) -> None:
    crate, _ = two_objects()
    bpy.context.view_layer.objects.active = crate
    log = draw(scene)
    text = labels(log)
    assert ("operator", "aigc.texture_selected", None) in log and ("operator", "aigc.generate_backdrop", None) in log
    assert ("operator", "aigc.add_prompt", None) in log           # the crate has no prompt property yet
    # the prompts are shown before they are sent
    assert "crate, made of wood old, props, weathered sci-fi" in text
    assert "foggy harbour at dawn, weathered sci-fi, 360 degree" in text

    bpy.ops.aigc.add_prompt()
    crate["aigc_prompt"] = "oak crate with iron bands"
    bpy.context.scene.aigc.show_templates = True
    bpy.context.scene.aigc.seed_mode = "FIXED"
    log = draw(scene)
    assert ("prop", '["aigc_prompt"]', "Prompt") in log and ("prop", "seed", None) in log
    assert ("prop", "object_template", "Object") in log
    assert "oak crate with iron bands" in labels(log)

    bpy.context.scene.aigc.object_template = "{colour} crate"
    assert "Template error: unknown field {colour}" in labels(draw(scene))

    runner = scene.runner  # a running job and an error, as the panel shows them
    from aigc_bridge.client import Progress

    run = runner.Run("Textures", "Scene", SimpleNamespace(close=lambda: None), "x", [
        SimpleNamespace(label="Crate.001"), SimpleNamespace(label="Barrel")], None, index=1,
        progress=Progress(3, 4, "denoising"))
    runner.STATE.run = run
    runner.STATE.error = sys.modules[f"{ADDON}.messages"].message("no_model", "The sidecar has no model.")
    try:
        log = draw(scene)
    finally:
        runner.STATE.run = None
    assert ("progress", 0.875, "Barrel (2/2) step 3/4") in log and ("operator", "aigc.cancel", "Cancel") in log
    assert "The sidecar has no model. Fix: Restart the sidecar with a model folder" in labels(log)

    # the preferences draw too, in both connection modes
    prefs = scene.prefs
    for mode in ("LOCAL", "ENDPOINT"):
        prefs.connection_mode = mode
        log = []
        values = {p.identifier: getattr(prefs, p.identifier) for p in prefs.bl_rna.properties
                  if p.identifier != "rna_type"}
        proxy = SimpleNamespace(layout=Recorder(log), **values)
        proxy.bl_rna = prefs.bl_rna
        type(prefs).draw(proxy, bpy.context)
        assert ("prop", "endpoint" if mode == "ENDPOINT" else "python_env", None) in log


# --- generation through the timer ------------------------------------------------------------------------


def test_texture_two_objects_through_the_timer(scene, monkeypatch, capsys) -> None:
    runner = scene.runner
    crate, barrel = two_objects()
    settings = bpy.context.scene.aigc
    settings.steps = 20
    settings.tile_repeat = 3.0
    sent = {}
    apply = runner._apply

    def recording(run, task, job):
        sent[task.target] = job
        apply(run, task, job)

    monkeypatch.setattr(runner, "_apply", recording)

    assert bpy.ops.aigc.texture_selected(mode="TIMER") == {"FINISHED"}
    assert runner.busy() and bpy.app.timers.is_registered(runner.tick)  # returned at once; the timer follows
    assert barrel.data.uv_layers                                          # smart UV project, before sending
    durations = pump(runner)
    assert runner.STATE.error is None, runner.STATE.error
    assert runner.STATE.info.startswith("Textures: done (Barrel seed") and not runner.busy()
    assert runner.status_summary().startswith("tiny-sd · CPU · queue 0/8")  # refreshed on the way out

    for obj in (crate, barrel):
        job = sent[obj.name]
        material = obj.active_material
        assert material.name == f"AIGC {obj.name}" and material["aigc_generated"]
        nodes = material.node_tree.nodes
        albedo = nodes["AIGC albedo"].image
        assert albedo.colorspace_settings.name == "sRGB" and albedo.packed_file is not None
        png = job.result.images[0].data
        assert np.array_equal(pixels(albedo), decoded(png)), "the image must hold exactly the pixels sent"
        links = {(link.from_node.name, link.to_socket.name) for link in material.node_tree.links}
        assert ("AIGC albedo", "Base Color") in links
        # PBR maps (the sidecar derives them when asked): Non-Color, normal through a Normal Map node
        maps = runner.maps_of(job)
        assert {"normal", "roughness"} <= set(maps)
        for role in ("normal", "roughness"):
            image = nodes[f"AIGC {role}"].image
            assert image.colorspace_settings.name == "Non-Color"
            assert np.array_equal(pixels(image), decoded(maps[role]))
        assert ("AIGC normal", "Color") in links and ("AIGC Normal Map", "Normal") in links
        assert ("AIGC roughness", "Roughness") in links
        assert tuple(nodes["AIGC Mapping"].inputs["Scale"].default_value) == (3.0, 3.0, 1.0)
        # what made it, to see and repeat
        request = job.result.request
        assert material["aigc_prompt"] == request["prompt"] and material["aigc_model"] == "tiny-sd"
        assert int(material["aigc_seed"]) == job.result.images[0].seed
        assert request["tile"] == "both" and request["pbr"] is True
    assert sent["Crate.001"].result.request["prompt"].startswith("crate, made of wood old, props, weathered")
    assert sent["Barrel"].result.request["prompt"].startswith("rusty oil barrel, weathered sci-fi")
    assert crate.active_material["aigc_source_material"] == "Wood_Old"

    longest = max(durations)
    with capsys.disabled():
        print(f"\n[timer] {len(durations)} calls while 2 jobs ran; longest {longest * 1000:.1f} ms, "
              f"median {sorted(durations)[len(durations) // 2] * 1000:.2f} ms")
    assert longest < TIMER_LIMIT_S


def test_backdrop_sets_the_world(scene) -> None:
    settings = bpy.context.scene.aigc
    settings.seed_mode, settings.seed = "FIXED", 7
    scene.prefs.force_timer = True  # the preference: the timer path although bpy runs in background mode
    assert bpy.ops.aigc.generate_backdrop() == {"FINISHED"}
    assert scene.runner.busy()
    assert max(pump(scene.runner)) < TIMER_LIMIT_S
    assert scene.runner.STATE.error is None, scene.runner.STATE.error
    world = bpy.context.scene.world
    env = world.node_tree.nodes["AIGC Environment"]
    assert env.projection == "EQUIRECTANGULAR" and tuple(env.image.size) == (128, 64)
    assert env.image.colorspace_settings.name == "sRGB"
    assert world.node_tree.nodes["AIGC Background"].inputs["Color"].links[0].from_node == env
    assert world["aigc_seed"] == 7 and world["aigc_prompt"].startswith("foggy harbour at dawn, weathered sci-fi")


def test_blocking_path_for_scripts_and_reruns_replace(scene) -> None:
    """In background mode (always, for the bpy module) the operators run to the end before returning."""
    crate, barrel = two_objects()
    assert bpy.app.background
    assert bpy.ops.aigc.texture_selected() == {"FINISHED"}
    assert not scene.runner.busy() and crate.active_material["aigc_generated"]
    def images() -> int:  # the material's images (the history keeps its own copies)
        return sum(not image.name.startswith("AIGC history") for image in bpy.data.images)

    counts = (len(bpy.data.materials), images(), len(crate.active_material.node_tree.nodes))
    first_seed = crate.active_material["aigc_seed"]
    assert bpy.ops.aigc.texture_selected() == {"FINISHED"}  # again: replaced, not piled up
    assert (len(bpy.data.materials), images(), len(crate.active_material.node_tree.nodes)) == counts
    assert crate.active_material["aigc_seed"] != first_seed  # random seeds
    assert not any(image.name.endswith(".001") for image in bpy.data.images)
    assert bpy.ops.aigc.generate_backdrop() == {"FINISHED"}
    assert bpy.ops.aigc.generate_backdrop() == {"FINISHED"}
    assert len(bpy.data.worlds) == 1 and len(bpy.context.scene.world.node_tree.nodes) == 3

    bpy.ops.object.camera_add(location=(0, -10, 0), rotation=(1.5708, 0, 0))
    bpy.context.scene.camera = bpy.context.object
    bpy.context.scene.aigc.backdrop_target = "PLANE"
    assert bpy.ops.aigc.generate_backdrop() == {"FINISHED"}
    plane = bpy.data.objects["AIGC Backdrop"]
    assert plane.parent == bpy.context.scene.camera and plane.active_material["aigc_generated"]
    assert plane.active_material["aigc_kind"] == "texture"  # a picture, not a panorama


def test_images_saved_beside_the_blend(scene, tmp_path) -> None:
    crate, _ = two_objects()
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "harbour.blend"))
    bpy.context.scene.aigc.storage = "BESIDE"
    assert bpy.ops.aigc.texture_selected() == {"FINISHED"}
    image = crate.active_material.node_tree.nodes["AIGC albedo"].image
    assert image.packed_file is None and image.filepath == "//aigc_textures/AIGC_Crate.001_albedo.png"
    on_disk = tmp_path / "aigc_textures" / "AIGC_Crate.001_albedo.png"
    assert np.array_equal(pixels(image), decoded(on_disk.read_bytes()))
    normal = crate.active_material.node_tree.nodes["AIGC normal"].image
    assert normal.colorspace_settings.name == "Non-Color" and normal.filepath.startswith("//aigc_textures/")


def test_cancel(scene) -> None:
    runner = scene.runner
    crate, _ = two_objects()
    bpy.context.scene.aigc.steps = LONG
    bpy.ops.aigc.texture_selected(mode="TIMER")
    run = runner.STATE.run
    pump(runner, until=lambda: run.progress is not None and run.progress.step >= 1)
    assert "step" in labels(draw(scene)) or any(e[0] == "progress" for e in draw(scene))
    assert bpy.ops.aigc.cancel() == {"FINISHED"}
    started = time.monotonic()
    durations = pump(runner, timeout=10)
    assert time.monotonic() - started < 5 and max(durations) < TIMER_LIMIT_S
    assert run.tasks[0].job.error.code == "cancelled" and run.index == 0
    assert runner.STATE.info == "Cancelled." and runner.STATE.error is None
    assert not crate.active_material.get("aigc_generated")  # nothing applied, the second task never sent
    assert run.tasks[1].job is None


# --- history -----------------------------------------------------------------------------------------------


def test_history_survives_reopen_and_reruns_identically(scene, tmp_path) -> None:
    """Generate twice (random seeds), save, reopen, recall the first, re-run it: the very same pixels."""
    bpy.ops.mesh.primitive_cube_add()
    crate = bpy.context.object
    crate.name = "Crate"
    crate["aigc_prompt"] = "oak crate"
    settings = bpy.context.scene.aigc

    def albedo() -> np.ndarray:
        return pixels(bpy.data.objects["Crate"].active_material.node_tree.nodes["AIGC albedo"].image)

    assert bpy.ops.aigc.texture_selected() == {"FINISHED"}
    first = albedo()
    crate["aigc_prompt"], settings.steps, settings.style = "mossy stone", 6, "overgrown"
    assert bpy.ops.aigc.texture_selected() == {"FINISHED"}
    second = albedo()
    assert not np.array_equal(first, second)
    items = settings.history
    assert len(items) == 2 and items[0].seed != items[1].seed and settings.history_index == 1
    assert np.array_equal(pixels(items[0].image), first)  # kept although the material's image was replaced

    path = tmp_path / "history.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(path))
    settings = bpy.context.scene.aigc
    items = settings.history
    assert len(items) == 2
    old = items[0]
    assert old.target == "Crate" and old.model == "tiny-sd" and len(old.model_hash) == 64
    assert old.prompt.startswith("oak crate, weathered sci-fi") and old.steps == 4 and old.kind == "texture"
    assert (old.width, old.height, old.tile) == (64, 64, "both")
    assert np.array_equal(pixels(old.image), first) and old.image.packed_file is not None
    old_seed = old.seed  # (adding items may move the collection: no references to items across that)
    log = draw(scene)
    assert ("template_list", "AIGC_UL_history", "history") in log
    assert ("operator", "aigc.history_rerun", None) in log and ("operator", "aigc.history_recall", None) in log

    assert bpy.ops.aigc.history_recall(index=0) == {"FINISHED"}
    crate = bpy.data.objects["Crate"]
    assert crate["aigc_prompt"] == "oak crate" and settings.style == "weathered sci-fi" and settings.steps == 4
    assert settings.seed_mode == "FIXED" and str(plans_seed(settings)) == old_seed
    assert bpy.context.view_layer.objects.active == crate and crate.select_get()

    assert bpy.ops.aigc.history_rerun(index=0) == {"FINISHED"}
    assert scene.runner.STATE.error is None, scene.runner.STATE.error
    assert np.array_equal(albedo(), first), "re-run: the same request gives the same pixels"
    assert len(settings.history) == 3 and settings.history[2].seed == old_seed
    assert bpy.ops.aigc.texture_selected() == {"FINISHED"}  # the recalled panel gives it too
    assert np.array_equal(albedo(), first)

    settings.seed_mode, settings.seed = "RANDOM", 0
    assert bpy.ops.aigc.history_use_seed(index=1) == {"FINISHED"}
    assert settings.seed_mode == "FIXED" and str(plans_seed(settings)) == settings.history[1].seed


def plans_seed(settings) -> int | None:
    return sys.modules[f"{ADDON}.plans"]._seed(settings)


# --- failures: clear messages, nothing escapes, the next attempt works ------------------------------------


def test_sidecar_not_running_then_back(scene, tiny_sd, tmp_path) -> None:
    runner, prefs = scene.runner, scene.prefs
    two_objects()
    prefs.connection_file = str(tmp_path / "nobody.json")
    with pytest.raises(RuntimeError, match="The sidecar is not running"):  # Blender turns ERROR reports into this
        bpy.ops.aigc.texture_selected(mode="TIMER")
    assert runner.STATE.error.code == "connection_file" and not runner.busy()
    assert "Fix: Start the local sidecar" in labels(draw(scene))

    port = free_port()  # an endpoint nobody listens on: silence until the timeout, in the timer path
    prefs.connection_mode, prefs.endpoint, prefs.timeout_s = "ENDPOINT", f"tcp://127.0.0.1:{port}", 1.0
    bpy.ops.aigc.texture_selected(mode="TIMER")
    durations = pump(runner, timeout=15)
    assert max(durations) < TIMER_LIMIT_S
    assert runner.STATE.error.code == "unavailable"
    assert f"not running or not answering at tcp://127.0.0.1:{port}" in runner.STATE.error.text
    assert "Start the sidecar" in labels(draw(scene))

    prefs.endpoint = "tcp://127.0.0.1"  # a bad endpoint: refused before anything is sent
    with pytest.raises(RuntimeError, match="not a ZeroMQ endpoint"):
        bpy.ops.aigc.texture_selected(mode="TIMER")
    assert runner.STATE.error.code == "bad_endpoint" and "tcp://HOST:PORT" in runner.STATE.error.fix

    server = SidecarProcess(tmp_path, tiny_sd, bind=f"tcp://127.0.0.1:{port}")  # back, on that endpoint
    try:
        key_file = tmp_path / "hmac.key"
        key_file.write_text(json.loads(server.connection_file.read_text())["key"])
        prefs.endpoint, prefs.key_file = f"tcp://127.0.0.1:{port}", str(key_file)
        assert bpy.ops.aigc.texture_selected(mode="TIMER") == {"FINISHED"}
        pump(runner)
        assert runner.STATE.error is None and bpy.data.objects["Barrel"].active_material["aigc_generated"]
        assert bpy.ops.aigc.refresh_status(mode="TIMER") == {"FINISHED"}
        pump(runner)
        assert runner.status_summary().startswith("tiny-sd · CPU · queue 0/")
    finally:
        server.stop()
        prefs.key_file = ""


def test_sidecar_killed_mid_job_then_restarted(scene, tiny_sd, tmp_path) -> None:
    runner, prefs = scene.runner, scene.prefs
    connection_file = tmp_path / "killed.json"
    server = SidecarProcess(tmp_path, tiny_sd, connection_file=connection_file)
    prefs.connection_file, prefs.timeout_s = str(connection_file), 1.0
    two_objects()
    bpy.context.scene.aigc.steps = LONG
    try:
        bpy.ops.aigc.texture_selected(mode="TIMER")
        run = runner.STATE.run
        pump(runner, until=lambda: run.progress is not None and run.progress.step >= 1)
        server.proc.kill()
        durations = pump(runner, timeout=15)
        assert max(durations) < TIMER_LIMIT_S
        assert runner.STATE.error.code == "unavailable" and not runner.busy()
        assert "not running or not answering" in labels(draw(scene))
    finally:
        server.stop()
    server = SidecarProcess(tmp_path, tiny_sd, connection_file=connection_file)  # a new port and key
    try:
        bpy.context.scene.aigc.steps = 4
        assert bpy.ops.aigc.texture_selected(mode="TIMER") == {"FINISHED"}
        pump(runner)
        assert runner.STATE.error is None and bpy.data.objects["Crate.001"].active_material["aigc_generated"]
    finally:
        server.stop()


def test_local_sidecar_start_status_stop(scene, tiny_sd) -> None:
    runner, prefs, launcher = scene.runner, scene.prefs, scene.launcher
    prefs.python_env, prefs.model_dir, prefs.provider = "/nonexistent/env", str(tiny_sd), "cpu"
    with pytest.raises(RuntimeError, match="No Python interpreter found"):
        bpy.ops.aigc.start_sidecar()
    prefs.python_env = sys.prefix  # this venv has aigc-bridge
    prefs.connection_file = str(Path(_HOME) / "absent.json")  # must not matter: the started one wins
    assert bpy.ops.aigc.start_sidecar(mode="TIMER") == {"FINISHED"}  # returns while the model loads
    two_objects()
    # Generate while it loads: the run waits for it (a progress line says so), then goes ahead
    assert bpy.ops.aigc.texture_selected(mode="TIMER") == {"FINISHED"}
    assert runner.STATE.run.waiting
    assert any(e[0] == "progress" and e[2].startswith("Starting the local sidecar") for e in draw(scene))
    assert max(pump(runner, timeout=60)) < TIMER_LIMIT_S
    assert runner.STATE.error is None and bpy.data.objects["Barrel"].active_material["aigc_generated"]
    sidecar = runner.STATE.sidecar
    assert sidecar.state == launcher.READY and sidecar.endpoint.startswith("tcp://127.0.0.1:")
    assert json.loads(sidecar.connection_file.read_text())["pid"] == sidecar.proc.pid
    assert bpy.ops.aigc.refresh_status() == {"FINISHED"}
    assert runner.STATE.status["model"]["id"] == "tiny-sd"
    assert bpy.ops.aigc.texture_selected() == {"FINISHED"} and runner.STATE.error is None
    assert bpy.ops.aigc.stop_sidecar() == {"FINISHED"}
    assert sidecar.proc.poll() is not None and not sidecar.connection_file.exists()
    assert runner.STATE.sidecar is None
    prefs.model_dir = ""  # no model folder: the sidecar serves the default model
    assert bpy.ops.aigc.start_sidecar(mode="BLOCKING") == {"FINISHED"}
    try:
        assert bpy.ops.aigc.refresh_status() == {"FINISHED"}
        assert runner.STATE.status["model"]["id"] == "texture-mini"
    finally:
        assert bpy.ops.aigc.stop_sidecar() == {"FINISHED"}


# --- models, runtimes and their failures ------------------------------------------------------------------


@pytest.fixture
def local_only(scene, monkeypatch, tmp_path):
    """Local mode with nothing to connect to (no connection file set, none at the default place): Generate
    starts the local sidecar, from this venv as the named Python environment."""
    monkeypatch.setattr(sys.modules[f"{ADDON}.connection"], "DEFAULT_CONNECTION_FILE", str(tmp_path / "none.json"))
    prefs = scene.prefs
    prefs.connection_file, prefs.python_env, prefs.provider, prefs.model_dir = "", sys.prefix, "cpu", ""
    yield scene
    scene.runner.stop_sidecar_process()
    prefs.python_env = prefs.model_dir = prefs.models_folder = ""


def _draw_prefs(prefs) -> list:
    log: list = []
    values = {p.identifier: getattr(prefs, p.identifier) for p in prefs.bl_rna.properties if p.identifier != "rna_type"}
    proxy = SimpleNamespace(layout=Recorder(log), **values)
    proxy.bl_rna = prefs.bl_rna
    type(prefs).draw(proxy, bpy.context)
    return log


def test_models_folder_lists_packages_and_switching_changes_the_output(local_only, tiny_sd, tiny_lcm, tmp_path) -> None:
    runner, prefs = local_only.runner, local_only.prefs
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "alpha").symlink_to(tiny_sd)
    (folder / "beta").symlink_to(tiny_lcm)
    (folder / "notes").mkdir()  # not a package: not listed
    prefs.models_folder = str(folder)
    text = labels(_draw_prefs(prefs))
    assert "texture-mini (built in) · sd" in text and "tileable" in text
    assert "tiny-sd · sd ·" in text and "tiny-lcm · sd ·" in text and " MB · 64x64 px · tileable" in text
    assert "notes" not in text
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.object
    settings = bpy.context.scene.aigc
    settings.seed_mode, settings.seed = "FIXED", 11

    def generate() -> tuple[np.ndarray, str]:
        assert bpy.ops.aigc.texture_selected() == {"FINISHED"}, runner.STATE.error
        material = cube.active_material
        return pixels(material.node_tree.nodes["AIGC albedo"].image), material["aigc_model"]

    assert bpy.ops.aigc.use_model(path=str(folder / "alpha")) == {"FINISHED"}
    assert runner.STATE.sidecar is None  # nothing running: the next generation starts it on this model
    log = draw(local_only)
    assert ("menu", "AIGC_MT_models", "Model: tiny-sd") in log
    # Generate with nothing running starts the local sidecar and returns at once; a progress line while it loads
    assert bpy.ops.aigc.texture_selected(mode="TIMER") == {"FINISHED"}
    assert runner.STATE.run.waiting and runner.STATE.sidecar.state == "starting"
    assert any(e[0] == "progress" and e[2].startswith("Starting the local sidecar") for e in draw(local_only))
    assert max(pump(runner, timeout=60)) < TIMER_LIMIT_S
    assert runner.STATE.error is None and cube.active_material["aigc_model"] == "tiny-sd"
    through_timer = pixels(cube.active_material.node_tree.nodes["AIGC albedo"].image)
    first, model = generate()  # the same seed again, blocking this time: the same pixels
    assert model == "tiny-sd" and np.array_equal(first, through_timer)
    sidecar = runner.STATE.sidecar
    assert bpy.ops.aigc.use_model(path=str(folder / "beta"), mode="TIMER") == {"FINISHED"}
    assert sidecar.proc.poll() is not None and runner.STATE.sidecar.state == "starting"  # restarting, in the background
    assert max(pump(runner, timeout=60)) < TIMER_LIMIT_S
    assert runner.STATE.sidecar.state == "ready" and runner.STATE.error is None
    second, model = generate()
    assert model == "tiny-lcm" and not np.array_equal(first, second)
    assert ("menu", "AIGC_MT_models", "Model: tiny-lcm") in draw(local_only)


def test_clear_messages_for_runtime_model_and_folder_failures(local_only, tiny_sd, tmp_path) -> None:
    """No bundled runtime (a source install has none), a model the sidecar cannot load, a models folder that does
    not exist: each a message with its fix, in the panel or the preferences; the timer never blocks."""
    runner, prefs = local_only.runner, local_only.prefs
    two_objects()
    prefs.python_env = ""  # the bundled runtime: this source checkout has none
    with pytest.raises(RuntimeError, match=r"no runtime bundled for this Blender \(linux-x64, Python 3\.11\)"):
        bpy.ops.aigc.texture_selected(mode="TIMER")
    assert runner.STATE.error.code == "no_runtime" and "Install the extension zip made for this platform" in (
        runner.STATE.error.fix)
    assert "no runtime bundled" in labels(draw(local_only))

    prefs.python_env = sys.prefix
    broken = tmp_path / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text("{not json")
    prefs.models_folder = str(broken.parent)
    assert "broken: model.json cannot be read" in labels(_draw_prefs(prefs))
    assert bpy.ops.aigc.use_model(path=str(broken)) == {"FINISHED"}
    assert bpy.ops.aigc.texture_selected(mode="TIMER") == {"FINISHED"}  # starts the sidecar on it, returns at once
    assert max(pump(runner, timeout=60)) < TIMER_LIMIT_S
    error = runner.STATE.error
    assert error is not None and error.code == "sidecar_model", error
    assert "The sidecar could not start:" in error.text and "is not valid JSON" in error.text
    assert "Pick another model" in error.fix and not runner.busy()
    assert "could not start" in labels(draw(local_only))

    prefs.models_folder = str(tmp_path / "nowhere")
    text = labels(_draw_prefs(prefs))
    assert f"The models folder {tmp_path / 'nowhere'} does not exist" in text and "Fix: Choose an existing" in text
    assert "texture-mini (built in)" in text  # the built-in model is still offered
    assert bpy.ops.aigc.use_model(path="") == {"FINISHED"}  # texture-mini: works again
    assert bpy.ops.aigc.texture_selected() == {"FINISHED"} and runner.STATE.error is None
    assert bpy.data.objects["Barrel"].active_material["aigc_model"] == "texture-mini"


def test_export_from_preferences_in_a_background_process(local_only, tiny_sd_src, tmp_path) -> None:
    runner, prefs = local_only.runner, local_only.prefs
    exporting = sys.modules[f"{ADDON}.exporting"]
    folder = tmp_path / "models"
    folder.mkdir()
    prefs.models_folder, prefs.export_source, prefs.export_name = str(folder), str(tiny_sd_src), "my-tiny"
    prefs.python_env = ""
    with pytest.raises(RuntimeError, match="the runtime bundled with the extension has no torch"):
        bpy.ops.aigc.export_model()
    prefs.python_env = sys.prefix  # this venv has the export extra
    import torch
    from aigc_bridge_export.tiny import write_tiny_lora
    from diffusers import DiffusionPipeline

    base = DiffusionPipeline.from_pretrained(tiny_sd_src, torch_dtype=torch.float32)
    lora = write_tiny_lora(base, tmp_path / "moss.safetensors", "peft", rank=2, seed=3)
    prefs.export_loras = f"{lora}:0.5"  # the exporter's own options, as on the command line
    assert bpy.ops.aigc.export_model() == {"FINISHED"}
    job = exporting.STATE.job
    assert job is not None and job.running and job.proc.pid != os.getpid()  # never in Blender's process
    fractions = []

    def watch():
        if exporting.STATE.job is not None:
            fractions.append(exporting.STATE.job.fraction)
            assert any(e[0] == "progress" for e in _draw_prefs(prefs))
        return False

    durations = pump(runner, timeout=400, until=watch)
    assert max(durations) < TIMER_LIMIT_S
    assert exporting.STATE.job is None and not exporting.STATE.failed, exporting.STATE.message
    assert exporting.STATE.message.startswith("Exported my-tiny into") and fractions[-1] > 0
    manifest = json.loads((folder / "my-tiny" / "model.json").read_text())
    assert [(x["name"], x["weight"]) for x in manifest["loras"]] == [("moss.safetensors", 0.5)]
    assert "my-tiny · sd ·" in labels(_draw_prefs(prefs))
    bpy.ops.mesh.primitive_cube_add()
    assert bpy.ops.aigc.use_model(path=str(folder / "my-tiny")) == {"FINISHED"}
    assert bpy.ops.aigc.texture_selected() == {"FINISHED"}, runner.STATE.error
    assert bpy.context.object.active_material["aigc_model"] == "my-tiny"


# --- what leaves Blender ---------------------------------------------------------------------------------


def _glb(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20:20 + length])
    return doc, data[20 + length + 8:]


def test_gltf_export_carries_the_textures(scene, tmp_path) -> None:
    crate, barrel = two_objects()
    bpy.context.scene.aigc.pbr_maps = True
    assert bpy.ops.aigc.texture_selected() == {"FINISHED"}
    out = tmp_path / "scene.glb"
    assert bpy.ops.export_scene.gltf(filepath=str(out), export_format="GLB") == {"FINISHED"}
    doc, binary = _glb(out)
    materials = {m["name"]: m for m in doc["materials"]}
    textures = doc["textures"]
    for obj in (crate, barrel):
        material = materials[f"AIGC {obj.name}"]
        assert "normalTexture" in material and "metallicRoughnessTexture" in material["pbrMetallicRoughness"]
        image = doc["images"][textures[material["pbrMetallicRoughness"]["baseColorTexture"]["index"]]["source"]]
        view = doc["bufferViews"][image["bufferView"]]
        png = binary[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]
        assert image["mimeType"] == "image/png"
        assert np.array_equal(decoded(png), pixels(obj.active_material.node_tree.nodes["AIGC albedo"].image))


def test_cycles_preview(scene, tmp_path) -> None:
    """A small Cycles (CPU) render of objects textured by the shipped model (texture-mini, on its own sidecar)
    under a generated sky, with the templates cut to the object's own description, as an artist would for a
    small model. With AIGC_UPDATE_PREVIEW=1 it is also written to docs/images/blender-preview.png."""
    server = SidecarProcess(tmp_path, None)  # no --model: the default model
    scene.prefs.connection_file = str(server.connection_file)
    crate, barrel = two_objects()
    bpy.ops.mesh.primitive_monkey_add(location=(-3, 0, 0))
    monkey = bpy.context.object
    monkey.name = "Bust"
    prompts = {crate: "weathered blue wooden planks", barrel: "red brick wall", monkey: "white marble"}
    for obj, prompt in prompts.items():  # adding the monkey selected it alone
        obj.select_set(True)
        obj["aigc_prompt"] = prompt
    settings = bpy.context.scene.aigc
    settings.object_template, settings.world_template = "{subject}", "{world}"
    settings.world_description = "sky at sunset"
    settings.steps = 0  # the model's recommendation
    settings.texture_size = settings.backdrop_size = "NATIVE"  # 32 px textures, a 64 x 32 sky: as generated
    try:
        assert bpy.ops.aigc.texture_selected() == {"FINISHED"}
        assert bpy.ops.aigc.generate_backdrop() == {"FINISHED"}
    finally:
        server.stop()
    albedo = {obj: pixels(obj.active_material.node_tree.nodes["AIGC albedo"].image) for obj in prompts}
    assert all(obj.active_material["aigc_prompt"] == prompt for obj, prompt in prompts.items())
    red, blue, white = (albedo[o][..., :3].mean(axis=(0, 1)) for o in (barrel, crate, monkey))
    assert red[0] > red[2] + 0.2 and blue[2] > blue[0] + 0.2 and white.min() > 0.6  # the prompts' colours
    bpy.ops.object.camera_add(location=(0, -9.5, 2.2), rotation=(1.36, 0, 0))
    render_scene = bpy.context.scene
    render_scene.camera = bpy.context.object
    bpy.ops.object.light_add(type="SUN", rotation=(0.8, 0.2, 0.6))
    render_scene.render.engine = "CYCLES"
    render_scene.cycles.device = "CPU"
    render_scene.cycles.samples = 16
    render_scene.cycles.use_denoising = False
    render_scene.render.resolution_x, render_scene.render.resolution_y = 320, 240
    render_scene.render.resolution_percentage = 100
    render_scene.render.image_settings.file_format = "PNG"
    out = tmp_path / "blender-preview.png"
    render_scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)
    image = decoded(out.read_bytes(), "RGB")
    assert image.shape == (240, 320, 3) and image.std() > 5
    assert out.stat().st_size < 200_000
    if os.environ.get("AIGC_UPDATE_PREVIEW") == "1":
        target = REPO / "docs" / "images" / "blender-preview.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, target)


def test_default_settings_with_the_shipped_model(scene, tmp_path) -> None:
    """The panel as a new user finds it, on texture-mini: a 512 px texture and a 1024 x 512 World, generated at
    the model's 32 px and resized (seconds on 2 cores, not minutes); a custom 4096 x 4096 is refused at once
    with the way to a large texture, and the scene keeps what it had."""
    server = SidecarProcess(tmp_path, None)
    scene.prefs.connection_file = str(server.connection_file)
    bpy.context.scene.property_unset("aigc")  # every setting back to its default
    settings = bpy.context.scene.aigc
    assert (settings.size_mode, settings.texture_size, settings.backdrop_size, settings.steps) == (
        "MODEL", "512", "1024", 0)
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.object
    cube["aigc_prompt"] = "red brick wall"
    try:
        started = time.monotonic()
        assert bpy.ops.aigc.texture_selected() == {"FINISHED"}
        assert bpy.ops.aigc.generate_backdrop() == {"FINISHED"}
        elapsed = time.monotonic() - started
        albedo = cube.active_material.node_tree.nodes["AIGC albedo"].image
        assert tuple(albedo.size) == (512, 512) and cube.active_material["aigc_width"] == 32
        sky = next(n for n in bpy.context.scene.world.node_tree.nodes if n.type == "TEX_ENVIRONMENT").image
        assert tuple(sky.size) == (1024, 512)
        print(f"panel defaults on texture-mini: texture + backdrop in {elapsed:.1f} s")

        settings.size_mode = "CUSTOM"
        settings.width = settings.height = 4096
        before = (len(bpy.data.images), cube.active_material.name, cube.active_material["aigc_seed"])
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="needs about"):  # the operator reports it as an error
            bpy.ops.aigc.texture_selected()
        assert time.monotonic() - started < 5
        error = scene.runner.STATE.error
        assert error is not None and error.code == "insufficient_memory", error
        assert "needs about" in error.text and "32 x 32" in error.text and "Texture Size" in error.fix
        assert (len(bpy.data.images), cube.active_material.name, cube.active_material["aigc_seed"]) == before
        assert "needs about" in labels(draw(scene))  # the panel shows it
    finally:
        server.stop()


# --- the built zip, installed the way users install it ------------------------------------------------------

INSTALL_SCRIPT = r'''
import json, os, sys
import bpy, addon_utils
import numpy as np
bpy.ops.wm.read_factory_settings(use_empty=True)
result = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
ADDON = "bl_ext.user_default.aigc_bridge"
import aigc_bridge.client, zmq
runner = sys.modules[ADDON + ".runner"]
prefs = bpy.context.preferences.addons[ADDON].preferences
report = {"install": sorted(result), "check": addon_utils.check(ADDON), "panel": hasattr(bpy.types, "VIEW3D_PT_aigc"),
          "client": aigc_bridge.client.__file__, "zmq": zmq.__file__, "python_env": prefs.python_env}
bpy.ops.mesh.primitive_cube_add()
cube = bpy.context.object
cube["aigc_prompt"] = "red brick wall"
settings = bpy.context.scene.aigc
settings.texture_size, settings.steps, settings.seed_mode, settings.seed = "NATIVE", 8, "FIXED", 3
report["generate"] = sorted(bpy.ops.aigc.texture_selected())  # background mode: blocking; starts the sidecar
report["error"] = str(runner.STATE.error) if runner.STATE.error else None
sidecar = runner.STATE.sidecar
report.update(sidecar_pid=sidecar.proc.pid, sidecar_cmd=sidecar.cmd, sidecar_log=str(sidecar.log_path))
with open(f"/proc/{sidecar.proc.pid}/maps") as f:
    report["mapped"] = sorted({line.split()[-1] for line in f if ".so" in line and line.split()[-1].startswith("/")})
material = cube.active_material
image = material.node_tree.nodes["AIGC albedo"].image
buf = np.empty(image.size[0] * image.size[1] * 4, np.float32)
image.pixels.foreach_get(buf)
report["image"] = {"size": list(image.size), "rgb": buf.reshape(-1, 4)[:, :3].mean(0).tolist(),
                   "model": material["aigc_model"], "seed": material["aigc_seed"],
                   "packed": image.packed_file is not None}
report["onnxruntime_in_blender"] = any(m.split(".")[0] == "onnxruntime" for m in sys.modules)
print("REPORT " + json.dumps(report), flush=True)
'''


def _bundled_zip(tmp_path: Path) -> Path:
    """Build the Linux x86-64 zip for this Blender line, as `make addon` does (wheels from build/wheels or PyPI)."""
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, str(SOURCE / "build.py"), "--platform", "linux-x64", "--line", "blender4.2",
                           "--output-dir", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (zip_path,) = out.glob("aigc_bridge-*-blender4.2-linux_x64.zip")
    return zip_path


def _only_bpy_env(tmp_path: Path) -> dict:
    """A Python that sees bpy and nothing else of this venv (run with -S): the client, pyzmq and the whole sidecar
    runtime can only come from the zip's wheels; HOME is empty, so no ~/.aigc connection file is found."""
    only_bpy = tmp_path / "only-bpy"
    only_bpy.mkdir()
    (only_bpy / "bpy").symlink_to(Path(bpy.__file__).resolve().parents[4])
    # numpy is Blender's own in real Blender; the bpy module's numpy is this venv's, so it is made visible alone
    import numpy

    (only_bpy / "numpy").symlink_to(Path(numpy.__file__).parent)
    (tmp_path / "home").mkdir()
    return {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user"), "MESA_SHADER_CACHE_DIR": str(tmp_path),
            "PYTHONPATH": str(only_bpy), "HOME": str(tmp_path / "home")}


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64", reason="the Linux x86-64 zip")
def test_bundled_zip_installs_and_generates_with_no_environment(tmp_path) -> None:
    """Install from Disk into a clean Blender user folder, press Texture Selected with no Python environment set:
    the sidecar starts on Blender's interpreter, isolated (-I -S), with the zip's packages alone, and the texture
    lands in the cube's material. Blender never imports onnxruntime; quitting Blender stops the sidecar."""
    zip_path = _bundled_zip(tmp_path)
    proc = subprocess.run([sys.executable, "-S", "-c", INSTALL_SCRIPT, str(zip_path)], capture_output=True,
                          text=True, env=_only_bpy_env(tmp_path), timeout=300, cwd=tmp_path)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert line, proc.stdout + proc.stderr
    report = json.loads(line[7:])
    user = str(tmp_path / "user")
    assert report["install"] == ["FINISHED"] and report["check"] == [True, True] and report["panel"]
    assert report["client"].startswith(user) and report["zmq"].startswith(user), report
    assert report["python_env"] == "" and report["generate"] == ["FINISHED"] and report["error"] is None, report
    # the texture: texture-mini's 32 px image, red for "red brick wall", packed into the material
    image = report["image"]
    assert image["size"] == [32, 32] and image["model"] == "texture-mini" and image["seed"] == 3 and image["packed"]
    red, green, blue = image["rgb"]
    assert red > blue + 0.1 and red > green
    assert not report["onnxruntime_in_blender"]
    # the sidecar: Blender's interpreter, isolated, on the extension's packages and nothing of this venv
    cmd = report["sidecar_cmd"]
    assert cmd[:3] == [sys.executable, "-I", "-S"], cmd
    boot = next(x for x in Path(report["sidecar_log"]).read_text().splitlines()
                if x.startswith("aigc-bridge sidecar bootstrap: "))
    info = json.loads(boot.split(": ", 1)[1])
    assert info["executable"] == sys.executable
    assert info["isolated"] == 1 and info["no_site"] == 1 and info["no_user_site"] == 1
    site = info["path"][0]
    assert site.startswith(user) and site.endswith("site-packages"), info["path"]
    venv = os.path.realpath(sys.prefix)
    assert not any(os.path.realpath(p).startswith(venv) or "site-packages" in p for p in info["path"][1:]), info
    mapped = report["mapped"]
    assert any("onnxruntime" in m and m.startswith(site) for m in mapped), mapped  # the bundled onnxruntime runs
    from_venv = [m for m in mapped if os.path.realpath(m).startswith(venv)]
    assert all("/numpy" in m for m in from_venv), from_venv  # only numpy ("Blender's") comes from outside the zip
    assert _gone(report["sidecar_pid"]), "the sidecar outlived Blender"


def _addon_build():
    spec = importlib.util.spec_from_file_location("addon_build", SOURCE / "build.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules["addon_build"] = build  # dataclasses look their module up
    spec.loader.exec_module(build)
    return build


def test_every_platform_zip_carries_its_runtime_and_validates(capsys) -> None:
    """The zips `make addon` made (CI runs it before the tests): each validated again by Blender's own
    `extension validate`, carrying exactly one wheel of each runtime package, all for its platform and Python,
    as its manifest lists them; sizes printed."""
    listing = REPO / "dist" / "extension-zips.json"
    build = _addon_build()
    claimed = {(p, line.python) for p in build.PLATFORMS for line in build.LINES}

    def built() -> set:
        return {(e["platform"], e["python"]) for e in json.loads(listing.read_text())} if listing.exists() else set()

    if built() != claimed:  # a fresh clone, or a partial build: build them all, as `make addon` does
        proc = subprocess.run([sys.executable, str(SOURCE / "build.py")], capture_output=True, text=True,
                              timeout=1200, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert built() == claimed
    entries = json.loads(listing.read_text())
    tags = {"linux-x64": "x86_64", "windows-x64": "win_amd64", "macos-arm64": ("arm64", "universal2"),
            "macos-x64": ("x86_64", "universal2")}
    for entry in entries:
        path = REPO / "dist" / entry["zip"]
        check = build.blender_cli(["validate", str(path)])
        assert check.returncode == 0, check.stdout + check.stderr
        held, listed = build.zip_wheels(path)
        assert held == listed == entry["wheels"]
        runtime = "onnxruntime_directml" if entry["platform"] == "windows-x64" else "onnxruntime"
        assert sorted(build._wheel_dist(w) for w in held) == sorted(
            ["aigc_bridge", runtime, "openexr", "pillow", "pyzmq", "tokenizers"])
        cp = "cp" + entry["python"].replace(".", "")
        for wheel in held:
            if not wheel.startswith("aigc_bridge-"):
                python_tag, abi, platform = wheel[:-4].split("-")[-3:]
                assert python_tag == cp or abi == "abi3", wheel
                assert platform.endswith(tags[entry["platform"]]), wheel
        assert path.stat().st_size == entry["bytes"] < 60_000_000
        with capsys.disabled():
            print(f"\n[zip] {entry['zip']}: {entry['bytes'] / 1e6:.1f} MB, {len(held)} wheels, validated", end="")


def test_build_fails_naming_a_wheel_missing_for_a_claimed_platform(monkeypatch, tmp_path, capsys) -> None:
    build = _addon_build()
    monkeypatch.setattr(build, "CACHE", tmp_path / "wheels")
    monkeypatch.setattr(build, "BUILD", tmp_path)
    build.CACHE.mkdir()
    tags, _ = build.PLATFORMS["macos-x64"]
    monkeypatch.setitem(build.PLATFORMS, "macos-x64", (tags, "onnxruntime==1.32.0"))  # no Intel-macOS wheel
    with pytest.raises(SystemExit) as exc:
        build.download("macos-x64", "3.11", offline=False)
    text = str(exc.value)
    assert "no onnxruntime==1.32.0 wheel for macos-x64 (Python 3.11" in text and "Pin a version" in text
    with pytest.raises(SystemExit, match="--offline, but build/wheels has no wheels for linux-x64"):
        build.download("linux-x64", "3.13", offline=True)


def test_sidecar_stops_when_blender_is_killed(tiny_sd, tmp_path) -> None:
    """Blender gone without quitting (killed, crashed): the sidecar notices its parent is gone and stops as on
    SIGTERM (its connection file removed)."""
    connection_file = tmp_path / "sidecar.json"
    boot = [sys.executable, str(SOURCE / "sidecar_boot.py"), "--parent", "PARENT", "--", "serve", "--model",
            str(tiny_sd), "--bind", "tcp://127.0.0.1:0", "--connection-file", str(connection_file)]
    blender = subprocess.Popen([sys.executable, "-c", (
        "import json, os, subprocess, sys, time\n"
        "cmd = [a.replace('PARENT', str(os.getpid())) for a in json.loads(sys.argv[1])]\n"
        "child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"), json.dumps(boot)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(blender.stdout.readline())
        deadline = time.monotonic() + 60
        while not connection_file.exists():
            assert time.monotonic() < deadline, "the sidecar never became ready"
            time.sleep(0.1)
        blender.kill()
        blender.wait()
        assert _gone(pid), "the sidecar outlived a killed Blender"
        assert not connection_file.exists()
    finally:
        if blender.poll() is None:
            blender.kill()

