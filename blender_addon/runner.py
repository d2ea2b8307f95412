"""The generation runner: one run at a time, advanced by ``tick``, a timer function that never waits.

``tick`` is what ``bpy.app.timers`` calls on Blender's main thread: it polls the client's non-blocking job
API (zero timeout), applies finished results to the scene (so every bpy write happens on the main thread),
and returns the seconds until it wants to run again, or None when there is nothing left to follow. The
blocking path used in background mode and by scripts drives the very same ``tick``, waiting on the socket
in between, so both paths share one state machine. Nothing raises out of ``tick``: failures become a
UserMessage in ``STATE`` that the panel shows.

Session state (not saved in the .blend): the run, the last error and info, the sidecar's status, a local
sidecar this Blender started, and how long the longest ``tick`` took (the panel never freezes on I/O).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import bpy

from aigc_bridge.client import Client, GeneratedImage, GenerateResponse, Job, Pending, Progress

from . import exporting, history, image_edits, launcher, scene_import
from .messages import UserMessage, describe, message
from .plans import BACKDROP, RESTYLE, SHAPE, TEXTURE, TILEABLE, ImportOptions, Task

POLL_S = 0.1        # how often the timer looks at the socket while a job runs
SIDECAR_POLL_S = 0.25


@dataclass
class Run:
    """One button press: tasks sent one after the other through one client."""

    title: str
    scene: str
    client: Client | None  # None: waiting for the local sidecar started for this run, then ``connect()``
    endpoint: str
    tasks: list[Task]
    options: ImportOptions
    connect: Callable[[], Client] | None = None
    index: int = 0
    cancelling: bool = False
    progress: Progress | None = None
    results: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def task(self) -> Task:
        return self.tasks[self.index]

    @property
    def waiting(self) -> bool:
        """Still waiting for the local sidecar (started by this run) to load its model."""
        return self.client is None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    @property
    def fraction(self) -> float:
        step = self.progress.fraction if self.progress is not None else 0.0
        return min(1.0, (self.index + step) / len(self.tasks))


@dataclass
class State:
    run: Run | None = None
    error: UserMessage | None = None
    info: str = ""
    status: dict | None = None
    status_error: UserMessage | None = None
    status_call: tuple[Client, Pending] | None = None
    sidecar: launcher.LocalSidecar | None = None
    ticks: int = 0
    longest_tick_s: float = 0.0


STATE = State()


# --- starting and stopping -------------------------------------------------------------------------------


def busy() -> bool:
    return STATE.run is not None


def start(run: Run, *, blocking: bool) -> None:
    """Begin ``run``: blocking (scripts, background mode) returns when it is over; otherwise the timer
    takes over and this returns at once."""
    if STATE.run is not None:
        run.close()
        raise RuntimeError("a run is already in progress")
    STATE.run, STATE.error = run, None
    STATE.info = (f"{run.title}: starting the local sidecar" if run.waiting else
                  f"{run.title}: sending {len(run.tasks)} request{'s' * (len(run.tasks) > 1)}")
    _follow(blocking)


def cancel() -> None:
    """Stop the run: the sidecar cancels the running job within one step; queued tasks are dropped."""
    run = STATE.run
    if run is None:
        return
    run.cancelling = True
    job = run.task.job if not run.waiting else None
    if job is None or job.done:
        _finish(run, info="Cancelled.")
    else:
        job.cancel()
        STATE.info = "Cancelling…"


def reset() -> None:
    """Forget the run and the status request (unregister, file load): the running job is cancelled."""
    run = STATE.run
    if run is not None:
        cancel()
        if STATE.run is not None and run.client is not None:
            run.client.poll(0.05)  # let the cancel leave before the socket closes (linger 0 drops it)
            _finish(run, info="Cancelled.")
    if STATE.status_call is not None:
        STATE.status_call[0].close()
        STATE.status_call = None


def stop_sidecar_process() -> None:
    if STATE.sidecar is not None:
        STATE.sidecar.stop()
        STATE.sidecar = None


# --- the timer -------------------------------------------------------------------------------------------


def tick() -> float | None:
    """Advance everything in flight by what has arrived, without waiting; seconds until the next call, or
    None when idle. Safe to call at any time, from the timer or a test loop."""
    started = time.perf_counter()
    delays = []
    for advance in (_advance_run, _advance_status, _advance_sidecar, exporting.advance):
        try:
            delays.append(advance())
        except Exception as exc:  # never into Blender's timer loop: a message in the panel instead
            _fail(exc)
    elapsed = time.perf_counter() - started
    STATE.ticks += 1
    STATE.longest_tick_s = max(STATE.longest_tick_s, elapsed)
    _redraw()
    live = [d for d in delays if d is not None]
    return min(live) if live else None


def drive_blocking() -> None:
    """The blocking path: the same ``tick``, waiting on the socket (not sleeping) in between. Ctrl-C
    cancels the running job."""
    try:
        _drive()
    except KeyboardInterrupt:
        cancel()
        _drive()


def _drive() -> None:
    while (delay := tick()) is not None:
        client = STATE.run.client if STATE.run else STATE.status_call[0] if STATE.status_call else None
        if client is not None and delay > 0:
            client.poll(delay)  # returns as soon as a message arrives
        elif delay > 0:
            time.sleep(delay)


def _follow(blocking: bool) -> None:
    if blocking:
        drive_blocking()
    elif not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=0.0)


# --- runs ------------------------------------------------------------------------------------------------


def _advance_run() -> float | None:
    run = STATE.run
    if run is None:
        return None
    try:
        return _advance(run)
    except Exception as exc:
        if run.cancelling:
            _finish(run, info="Cancelled.")
        else:
            _finish(run, error=describe(exc, run.endpoint))
        return None


def _advance(run: Run) -> float | None:
    if run.waiting:
        sidecar = STATE.sidecar
        state = sidecar.poll() if sidecar is not None else launcher.FAILED
        if state == launcher.STARTING:
            STATE.info = f"{run.title}: starting the local sidecar (loading the model, {sidecar.elapsed:.0f} s)"
            return SIDECAR_POLL_S
        if state != launcher.READY:
            raise launcher.LauncherError(
                sidecar.error if sidecar is not None and sidecar.error is not None
                else message("sidecar_start", "The local sidecar stopped before it was ready"))
        run.client = run.connect()
        run.endpoint = run.client.endpoint
    task = run.task
    if task.job is None:
        task.job = (run.client.submit_project(task.fields["request"]) if task.kind == SHAPE
                    else run.client.submit(task.prompt, **task.fields))
        STATE.info = f"{run.title}: {task.label}"
        return POLL_S
    job = task.job
    events = job.poll()
    if events:
        run.progress = events[-1]
    if not job.done:
        return POLL_S
    if job.error is not None:
        raise job.error
    if run.cancelling:
        _finish(run, info="Cancelled.")
        return None
    _apply(run, task, job)
    run.index += 1
    run.progress = None
    if run.index < len(run.tasks):
        return 0.0
    done = ", ".join(run.results) or "nothing"
    skipped = f"; skipped {', '.join(run.skipped)} (gone from the scene)" if run.skipped else ""
    _finish(run, info=f"{run.title}: done ({done}){skipped}.")
    return None


def _finish(run: Run, *, error: UserMessage | None = None, info: str = "") -> None:
    if STATE.run is run:
        STATE.run = None
    STATE.error = error if error is not None and error.code != "cancelled" else None
    STATE.info = "Cancelled." if error is not None and error.code == "cancelled" else info
    if error is None and not run.cancelling and STATE.status_call is None and run.client is not None:
        try:  # the sidecar just answered: refresh the panel's status line through the same client
            STATE.status_call = (run.client, run.client.send("status"))
            return
        except Exception:
            pass
    run.close()
    if STATE.error is not None:
        print(f"AIGC Bridge: {STATE.error}")
        _notify(STATE.error)


def _notify(msg: UserMessage) -> None:
    """An error that arrives after the operator returned: a popup where there is a window (the panel shows
    it too). Nothing to show in background mode."""
    if bpy.app.background:
        return
    wm = bpy.context.window_manager

    def draw(menu, _context) -> None:
        menu.layout.label(text=msg.text)
        if msg.fix:
            menu.layout.label(text=f"Fix: {msg.fix}")

    for window in wm.windows:
        try:
            with bpy.context.temp_override(window=window):
                wm.popup_menu(draw, title="AIGC Bridge", icon="ERROR")
            return
        except Exception:
            continue


def _fail(exc: BaseException) -> None:
    """A failure outside a run's own handling (a bug of ours): shown, and the run ended."""
    STATE.error = describe(exc)
    if STATE.run is not None:
        STATE.run.close()
        STATE.run = None


def maps_of(job: Job, index: int = 0) -> dict[str, bytes]:
    """Role -> image bytes of one result: the image as "albedo", plus the PBR maps the sidecar sent
    (normal, roughness, orm, height, ao) when the request asked for them; GLB and JSON outputs are not
    textures."""
    image = job.result.images[index]
    maps = {scene_import.ALBEDO: image.data}
    maps.update({o.role: o.data for o in image.outputs if o.mime in ("image/png", "image/x-exr")})
    return maps


def result_info(response: GenerateResponse, image: GeneratedImage) -> dict:
    """What made an image, to keep with it: prompt, seed, model and the request's main fields."""
    request = response.request
    return {"prompt": request.get("prompt"), "negative_prompt": request.get("negative_prompt"),
            "seed": image.seed, "model": image.model_id, "model_hash": image.model_hash,
            "provider": image.provider,
            "steps": request.get("steps"), "width": request.get("width"), "height": request.get("height"),
            "target_size": request.get("target_size"), "tile": request.get("tile"), "kind": request.get("kind"),
            "request_key": response.request_key}


def _apply_shape(run: Run, task: Task, job: Job) -> None:
    """Baked textures onto their objects (only now, so a cancelled or failed run changed no material)."""
    response = job.result
    uv_maps = task.fields["uv_maps"]
    request = task.fields["request"]
    info = {"prompt": task.prompt, "negative_prompt": request.negative_prompt, "seed": request.seed,
            "model": response.model_id, "steps": request.steps, "request_key": response.request_key}
    done = []
    for texture in response.textures:
        obj = bpy.data.objects.get(texture.mesh)
        if obj is None or obj.type != "MESH":
            run.skipped.append(texture.mesh)
            continue
        scene_import.apply_baked_texture(obj, texture.data, uv_maps[texture.mesh], info, pack=run.options.pack,
                                         directory=run.options.directory)
        done.append(f"{texture.mesh} {texture.coverage:.0%} seen")
    notes = [*task.fields.get("notes", ()), *response.warnings]
    run.results.append(f"{', '.join(done)}; {len(response.views)} views; {response.mode_text}"
                       + (f"; {'; '.join(notes)}" if notes else ""))


def _apply(run: Run, task: Task, job: Job) -> None:
    if task.kind == SHAPE:
        _apply_shape(run, task, job)
        return
    image = job.result.images[0]
    info = result_info(job.result, image)
    options = run.options
    if task.kind == TEXTURE:
        obj = bpy.data.objects.get(task.target)
        if obj is None or obj.type != "MESH":
            run.skipped.append(task.target)
            return
        scene_import.apply_texture_set(obj, maps_of(job), info, tile_repeat=options.tile_repeat,
                                       pack=options.pack, directory=options.directory)
    elif task.kind == BACKDROP:
        scene = bpy.data.scenes.get(run.scene)
        if scene is None:
            run.skipped.append(task.label)
            return
        if options.backdrop_target == "PLANE":
            scene_import.set_backdrop_plane(scene, image.data, info, pack=options.pack,
                                            directory=options.directory)
        else:
            scene_import.set_world_backdrop(scene, image.data, info, pack=options.pack,
                                            directory=options.directory)
    elif task.kind == RESTYLE:
        obj = bpy.data.objects.get(task.target)
        if obj is None or image_edits.apply_restyle(obj, *task.node, image.data, info, pack=options.pack,
                                                    directory=options.directory) is None:
            run.skipped.append(task.target)
            return
    elif task.kind == TILEABLE and image_edits.apply_tileable(task.target, image.data, info, pack=options.pack,
                                                              directory=options.directory) is None:
        run.skipped.append(task.target)
        return
    scene = bpy.data.scenes.get(run.scene)
    if scene is not None and task.kind in (TEXTURE, BACKDROP):  # image edits carry their source image: not kept
        history.record(scene, task, image.data, info, options.backdrop_target)
    run.results.append(f"{task.label} seed {image.seed}")


# --- status ----------------------------------------------------------------------------------------------


def request_status(client: Client, *, blocking: bool) -> None:
    """Ask the sidecar for its status (model, provider, queue) without waiting for the answer."""
    if STATE.status_call is not None:
        STATE.status_call[0].close()
    STATE.status_call = (client, client.send("status"))
    _follow(blocking)


def _advance_status() -> float | None:
    if STATE.status_call is None:
        return None
    client, pending = STATE.status_call
    try:
        pending.poll()
        if not pending.done:
            return POLL_S
        if pending.error is not None:
            STATE.status, STATE.status_error = None, describe(pending.error, client.endpoint)
        else:
            STATE.status, STATE.status_error = pending.reply, None
    except Exception as exc:
        STATE.status, STATE.status_error = None, describe(exc, client.endpoint)
    client.close()
    STATE.status_call = None
    return None


def status_summary() -> str:
    """One line for the panel: model, provider, queue and state, or why there is none."""
    status = STATE.status
    if status is None:
        return "Not connected" if STATE.status_error is None else "Not connected (see below)"
    model = (status.get("model") or {}).get("id") or "no model"
    queue = status.get("queue") or {}
    provider = (status.get("provider") or "?").replace("ExecutionProvider", "")
    return (f"{model} · {provider} · queue {queue.get('length', 0)}/{queue.get('capacity', 0)} · "
            f"{status.get('state', '?')}")


# --- local sidecar ---------------------------------------------------------------------------------------


def start_sidecar(sidecar: launcher.LocalSidecar, *, blocking: bool) -> None:
    """Launch a local sidecar (replacing one started before) and follow it until it is ready."""
    stop_sidecar_process()
    STATE.sidecar = sidecar
    sidecar.start()
    if blocking:
        sidecar.wait_ready()
        _sidecar_settled(sidecar)
    else:
        _follow(False)


def _advance_sidecar() -> float | None:
    sidecar = STATE.sidecar
    if sidecar is None or sidecar.state != launcher.STARTING:
        return None
    if sidecar.poll() == launcher.STARTING:
        return SIDECAR_POLL_S
    _sidecar_settled(sidecar)
    return None


def _sidecar_settled(sidecar: launcher.LocalSidecar) -> None:
    if sidecar.state == launcher.READY:
        STATE.info = f"Local sidecar ready on {sidecar.endpoint}"
        STATE.error = STATE.status_error = None
    else:
        STATE.error = sidecar.error or message("sidecar_start", "The local sidecar did not start")


def sidecar_summary() -> str:
    sidecar = STATE.sidecar
    if sidecar is None:
        return "Local sidecar: not started from Blender"
    state = sidecar.poll()
    if state == launcher.READY:
        return f"Local sidecar: running on {sidecar.endpoint} (pid {sidecar.proc.pid})"
    if state == launcher.STARTING:
        return f"Local sidecar: starting ({sidecar.elapsed:.0f} s)…"
    return f"Local sidecar: {state}"


def local_connection_file() -> str | None:
    """The connection file of the sidecar this Blender started, while it runs."""
    sidecar = STATE.sidecar
    return str(sidecar.connection_file) if sidecar is not None and sidecar.running else None


# --- UI --------------------------------------------------------------------------------------------------


def _redraw() -> None:
    """Ask the 3D Views to redraw the panel (cheap; nothing is drawn without a window)."""
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        screen = window.screen
        for area in screen.areas if screen else ():
            if area.type in {"VIEW_3D", "PREFERENCES"}:
                area.tag_redraw()
