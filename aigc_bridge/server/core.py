"""The socket loop: one ROUTER socket, every message decoded as it arrives and answered, while the
worker thread runs the engine. cancel, status and shutdown share the socket with generate, so this loop
never runs the engine; it also never dies from what a peer sends (each message is handled inside its
own try block, and every request it can attribute gets a reply).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from .. import __version__
from ..engine.families import model_limits
from ..engine.package import DIT_FAMILIES
from ..errors import AigcError, Cancelled, InvalidRequest
from ..protocol import (
    MAX_FRAMES,
    MAX_REQUEST_FRAME_BYTES,
    MAX_ROUTING_IDS,
    REQUEST_TYPES,
    Codec,
    Message,
    ProtocolError,
    error_content,
    new_id,
    split_routing,
    with_routing,
)
from ..request import KINDS, MAX_SIDE, SCHEDULERS, TILE_MODES
from .jobs import Final, Job, JobBoard, QueueFull
from .security import ZAP_DOMAIN, check_bind, start_authenticator
from .worker import Outgoing, Worker

log = logging.getLogger("aigc_bridge.server")

_POLL_MS = 100  # also bounds how late a stop request (signal handler) is noticed
_BATCH = 256  # messages read per turn before the worker's outbox gets its turn
_MAX_PARTS = MAX_ROUTING_IDS + MAX_FRAMES + 1  # parts kept of one received message; the rest is dropped


@dataclass
class ServerConfig:
    """``key``: HMAC key (None: unsigned, loopback only). ``queue_size``: jobs that may wait behind the
    running one. ``curve_keys``: the server's (public, secret) Z85 pair; ``authorized_keys``: folder
    of client public keys the ZAP handler admits. ``preview_interval_s``: least time between preview
    images of a job (None: no previews). ``keepalive_s``: a job that got no message for this long gets
    its current progress again, so a client can tell a slow server from a dead one."""

    bind: str = "tcp://127.0.0.1:5555"
    key: str | bytes | None = None
    queue_size: int = 8
    curve_keys: tuple[bytes, bytes] | None = None
    authorized_keys: Path | None = None
    preview_interval_s: float | None = 0.5
    keepalive_s: float = 0.5
    cache_entries: int = 256


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc; None elsewhere, where no cheap source exists)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def model_info(m: dict) -> dict:
    """What ``list_models`` says of a loaded package: enough for a client to build a request this model
    takes (sizes, tiling, input images, controlnets) without learning it from errors."""
    multiple = m["size_multiple"]
    tiles = [t for t in TILE_MODES if t in m["unet"]["graphs"] and t in m["vae_decoder"]["graphs"]]
    controlnets = sorted(m.get("controlnets") or {})
    accepts = []
    if (m.get("vae_encoder") or {}).get("graphs", {}).get("none"):
        accepts += ["init", "mask"]
    if m["unet"].get("conditioning") == "depth":
        accepts.append("depth")  # the SD 2 depth model: latents + the depth map
    if controlnets and m["unet"].get("control"):
        accepts.append("controls")
    if m["family"] in DIT_FAMILIES:
        accepts = []  # SD 3 / FLUX.1: text to image only, for now
    return {"id": m["model_id"], "hash": m["package_hash"], "kinds": list(KINDS), "width": m["native_size"][1],
            "height": m["native_size"][0], "steps": m["recommended"]["steps"], "schedulers": list(SCHEDULERS),
            "loaded": True, "size_multiple": multiple, "max_side": MAX_SIDE // multiple * multiple,
            "tile_modes": tiles, "accepts": accepts, "controlnets": controlnets, **model_limits(m)}


class Server:
    """The sidecar. ``pipeline``: a loaded engine Pipeline (None: no model; generate is refused).
    ``bind()`` then ``serve()`` (blocks until shut down), or ``start()`` to serve on a thread.
    ``stop()`` may be called from any thread or a signal handler."""

    def __init__(self, pipeline, config: ServerConfig, context: zmq.Context | None = None) -> None:
        check_bind(config.bind, config.curve_keys is not None, config.authorized_keys)
        self.config = config
        self._pipeline = pipeline
        key = config.key.encode("utf-8") if isinstance(config.key, str) else config.key
        self._codec = Codec(key, accept=REQUEST_TYPES)
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._board = JobBoard(config.queue_size, cache_entries=config.cache_entries)
        self._router: zmq.Socket | None = None
        self._wake: zmq.Socket | None = None
        self._auth = None
        self._worker: Worker | None = None
        self._thread: threading.Thread | None = None
        self._stop_request: bool | None = None  # None: keep serving; else drain or not
        self._draining = False
        self._started = time.monotonic()
        self.endpoint: str | None = None
        self._provider = pipeline.provider if pipeline is not None else None
        self._providers: list[str] = []
        if pipeline is not None:
            import onnxruntime

            self._providers = list(onnxruntime.get_available_providers())[:32]
        self._handlers = {"generate": self._on_generate, "cancel": self._on_cancel, "status": self._on_status,
                          "list_models": self._on_list_models, "shutdown": self._on_shutdown,
                          "ping": self._on_ping, "project": self._on_project}

    @property
    def session(self) -> str:
        return self._codec.session

    @property
    def public_key(self) -> bytes | None:
        return self.config.curve_keys[0] if self.config.curve_keys else None

    # --- life cycle ----------------------------------------------------------------------------------

    def bind(self) -> str:
        """Create the sockets and bind; returns the endpoint actually bound (port 0 -> the real port)."""
        router = self._context.socket(zmq.ROUTER)
        router.linger = 0
        router.router_mandatory = 1  # an unroutable reply raises instead of vanishing silently
        router.maxmsgsize = MAX_REQUEST_FRAME_BYTES  # per frame: a peer sending more is disconnected
        router.sndhwm = router.rcvhwm = 1000
        router.heartbeat_ivl, router.heartbeat_timeout = 1000, 3000
        if self.config.curve_keys is not None:
            self._auth = start_authenticator(self._context, self.config.authorized_keys)
            router.curve_server = True
            router.curve_publickey, router.curve_secretkey = self.config.curve_keys
            router.zap_domain = ZAP_DOMAIN.encode()
        try:
            router.bind(self.config.bind)
        except zmq.ZMQError as exc:
            router.close()
            self._stop_auth()
            raise AigcError("bind_failed", f"cannot bind {self.config.bind}: {exc}", "bind") from None
        self._router = router
        self.endpoint = router.last_endpoint.decode()
        wake_endpoint = f"inproc://aigc-bridge-wake-{new_id()}"
        self._wake = self._context.socket(zmq.PULL)
        self._wake.linger = 0
        self._wake.bind(wake_endpoint)
        self._worker = Worker(self._pipeline, self._board, self._context, wake_endpoint,
                              self.config.preview_interval_s)
        self._started = time.monotonic()
        return self.endpoint

    def start(self) -> str:
        """Bind and serve on a background thread (embedding, tests); returns the endpoint."""
        endpoint = self.bind()
        self._thread = threading.Thread(target=self.serve, name="aigc-bridge-server", daemon=True)
        self._thread.start()
        return endpoint

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, drain: bool = False) -> None:
        """Ask the loop to shut down: ``drain`` finishes queued and running jobs, else the running job is
        cancelled (within one step) and queued ones get a "shutting_down" error. Signal-safe."""
        self._stop_request = drain if self._stop_request is None else (self._stop_request and drain)

    def serve(self) -> None:
        if self._router is None:
            self.bind()
        assert self._worker is not None and self._wake is not None and self._router is not None
        self._worker.start()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        next_keepalive = time.monotonic() + self.config.keepalive_s
        try:
            while True:
                if self._stop_request is not None:
                    drain, self._stop_request = self._stop_request, None
                    self._begin_shutdown(drain)
                ready = dict(poller.poll(_POLL_MS))
                if self._wake in ready:
                    self._drain_wake()
                if self._router in ready:
                    self._receive_batch()
                self._drain_outbox()
                if time.monotonic() >= next_keepalive:
                    self._keepalive()
                    next_keepalive = time.monotonic() + self.config.keepalive_s
                if self._draining and not self._worker.is_alive():
                    self._drain_outbox()
                    break
        finally:
            self._close()

    def _close(self) -> None:
        self._board.close()
        running = self._board.running
        if running is not None:  # only when the loop itself failed: do not wait for a whole job
            running.cancel.set()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=5.0)
        if self._router is not None:
            self._router.close(linger=1000)  # let the last replies (shutdown_reply, errors) go out
        if self._wake is not None:
            self._wake.close(linger=0)
        self._stop_auth()
        if self._own_context and not (self._worker is not None and self._worker.is_alive()):
            self._context.term()
        log.info("server stopped")

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _begin_shutdown(self, drain: bool) -> None:
        if not self._draining:
            log.info("shutting down (%s)", "finishing queued jobs" if drain else "cancelling jobs")
        self._draining = True
        if not drain:
            for job in self._board.drain_queue():
                err = AigcError("shutting_down", "the server is shutting down; this job was not started")
                self._finish(job, "error", error_content(err))
            running = self._board.running
            if running is not None:
                running.cancel.set()
        self._board.close()

    # --- receiving -----------------------------------------------------------------------------------

    def _drain_wake(self) -> None:
        while True:
            try:
                self._wake.recv(flags=zmq.NOBLOCK)  # type: ignore[union-attr]
            except zmq.Again:
                return

    def _receive_batch(self) -> None:
        router = self._router
        for _ in range(_BATCH):
            try:
                frames = [router.recv(flags=zmq.NOBLOCK)]  # type: ignore[union-attr]
            except zmq.Again:
                return
            while router.rcvmore:  # type: ignore[union-attr]
                part = router.recv()  # type: ignore[union-attr]  # a multipart message arrives whole
                if len(frames) < _MAX_PARTS:
                    frames.append(part)
            try:
                self._handle(frames)
            except Exception:  # last line of defence: log, drop the message, keep serving
                log.exception("unexpected failure handling a message; dropped")

    def _handle(self, frames: list[bytes]) -> None:
        try:
            route, body = split_routing(frames)
        except ProtocolError as err:
            self._send(frames[:1], self._codec.encode_error(err))  # frames[0]: the peer's routing id
            return
        try:
            msg = self._codec.decode(body)
        except ProtocolError as err:  # attributed (parent = its msg_id) when the header was authentic
            self._send(route, self._codec.encode_error(err))
            return
        try:
            self._handlers[msg.msg_type](route, msg)
        except AigcError as exc:
            self._reply_error(route, msg, exc)
        except Exception as exc:
            log.exception("%s %s failed", msg.msg_type, msg.msg_id)
            self._reply_error(route, msg, AigcError("internal", f"the server failed on this {msg.msg_type} "
                                                    f"({type(exc).__name__}: {exc})"))

    # --- sending -------------------------------------------------------------------------------------

    def _send(self, route: list[bytes], frames: list[bytes]) -> None:
        try:
            self._router.send_multipart(with_routing(route, frames), flags=zmq.NOBLOCK)  # type: ignore
        except zmq.Again:
            log.debug("peer is not reading (high-water mark); message dropped")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.debug("peer gone; message dropped")

    def _reply(self, route: list[bytes], msg: Message, msg_type: str, content: dict) -> None:
        if msg.ignored_fields:
            content = {**content, "ignored_fields": list(msg.ignored_fields)}
        self._send(route, self._codec.reply(msg, msg_type, content))

    def _reply_error(self, route: list[bytes], msg: Message, exc: AigcError) -> None:
        extra: dict = {}
        if isinstance(exc, QueueFull):
            extra["retry_after_s"] = exc.retry_after_s
        if msg.ignored_fields:
            extra["ignored_fields"] = list(msg.ignored_fields)
        self._send(route, self._codec.encode_error(exc, parent_id=msg.msg_id, request_key=msg.request_key,
                                                   **extra))

    def _send_job(self, job: Job, msg_type: str, content: dict, buffers: tuple[bytes, ...] = ()) -> None:
        self._send_job_frames(job, self._encode_for(job, msg_type, content, buffers))

    def _encode_for(self, job: Job, msg_type: str, content: dict, buffers: tuple[bytes, ...] = ()) -> list[bytes]:
        return self._codec.encode(msg_type, content, parent_id=job.msg_id, buffers=buffers,
                                  request_key=job.request_key)

    def _send_job_frames(self, job: Job, frames: list[bytes]) -> None:
        job.last_sent = time.monotonic()
        self._send(job.route, frames)

    def _progress_now(self, job: Job) -> dict:
        """The job's current progress: its ack on (re)submission and its keepalive."""
        content = {"step": job.step, "total": job.total, "count": job.resolved.count, "stage": job.stage}
        if job.state == "queued":
            content["queue_position"] = self._board.position(job)
        elif job.started is not None:
            content["elapsed_s"] = round(time.monotonic() - job.started, 6)
        return content

    def _keepalive(self) -> None:
        now = time.monotonic()
        for job in self._board.active():
            if now - job.last_sent >= self.config.keepalive_s:
                try:
                    self._send_job(job, "progress", self._progress_now(job))
                except Exception:
                    log.exception("cannot send a keepalive for job %s", job.request_key[:8])

    def _drain_outbox(self) -> None:
        outbox = self._worker.outbox  # type: ignore[union-attr]
        while True:
            try:
                item: Outgoing = outbox.get_nowait()
            except queue.Empty:
                return
            try:
                if item.final:
                    self._finish(item.job, item.msg_type, item.content, item.buffers)
                elif item.job.state != "finished":
                    self._send_job(item.job, item.msg_type, item.content, item.buffers)
            except Exception:
                log.exception("cannot send a %s for job %s", item.msg_type, item.job.request_key[:8])

    def _finish(self, job: Job, msg_type: str, content: dict, buffers: tuple[bytes, ...] = ()) -> None:
        """Send the job's last message and keep it for retries with the same request_key. The log line
        is written first, so whoever holds the reply can also find the line."""
        if job.ignored_fields:
            content = {**content, "ignored_fields": list(job.ignored_fields)}
        try:
            frames = self._encode_for(job, msg_type, content, buffers)
        except ProtocolError as exc:  # e.g. a result over the size limits: the client still gets an answer
            msg_type, buffers = "error", ()
            content = error_content(AigcError("internal", f"the result cannot be sent: {exc.message}"))
            frames = self._encode_for(job, msg_type, content)
        self._board.finish(job, Final(msg_type, content, buffers, job.request.to_dict(), tuple(job.msg_ids)))
        self._log_job(job, msg_type, content)
        self._send_job_frames(job, frames)

    def _log_job(self, job: Job, msg_type: str, content: dict) -> None:
        req = job.resolved
        if job.project is not None:
            _log_project(job, msg_type, content)
            return
        began = job.started if job.started is not None else job.submitted
        prompt = req.prompt if len(req.prompt) <= 40 else req.prompt[:39] + "…"
        outcome = "ok" if msg_type == "result" else f"error {content.get('code')}"
        log.info("job %s %r %dx%d %d steps %.2f s %s", job.request_key[:8], prompt, req.width, req.height,
                 req.steps, time.monotonic() - began, outcome)

    # --- requests ------------------------------------------------------------------------------------

    def _replayed_or_refused(self, route: list[bytes], msg: Message) -> bool:
        """What every job request does first: a retry of a known request_key is answered from its job (True);
        otherwise the server must have a model and not be draining. Requests compare by their JSON (input images
        and mesh arrays by their sha256)."""
        req, key = msg.request, msg.request_key
        found = self._board.find(key)
        if found is not None:
            sent = found.request if isinstance(found, Final) else found.request.to_dict()
            if sent != req.to_dict():
                raise InvalidRequest(f"request_key {key} was already used for a different request; "
                                     "use a new key for new work", "header.request_key")
            if isinstance(found, Final):  # finished: the same final message again, to this attempt
                self._send(route, self._codec.encode(found.msg_type, found.content, parent_id=msg.msg_id,
                                                     buffers=found.buffers, request_key=key))
            else:  # queued or running: the rest of it goes to this newest attempt
                found.attach(route, msg.msg_id)
                self._send_job(found, "progress", self._progress_now(found))
            return True
        if self._pipeline is None:
            raise AigcError("no_model", "this server has no model loaded: start it with --model DIR", "model")
        if self._draining:
            raise AigcError("shutting_down", "the server is shutting down")
        return False

    def _on_generate(self, route: list[bytes], msg: Message) -> None:
        req, key = msg.request, msg.request_key
        assert req is not None and key is not None  # the codec guarantees both for a generate
        if self._replayed_or_refused(route, msg):
            return
        resolved = self._pipeline.resolve(req)  # the model's checks: sizes, mask, controlnets, strength, memory
        job = Job(key, req, resolved, route, msg.msg_id, msg.ignored_fields,
                  steps=self._pipeline.denoising_steps(resolved))
        self._board.submit(job)
        self._send_job(job, "progress", self._progress_now(job))

    def _on_project(self, route: list[bytes], msg: Message) -> None:
        """Texture meshes from their shape: checked here (geometry, cameras, the model's view sizes), so a bad
        request is refused before it is queued; the worker runs the loop (docs/protocol.md, "project")."""
        from ..projection import service  # numpy work; only a project needs it

        req, key = msg.request, msg.request_key
        if self._replayed_or_refused(route, msg):
            return
        prepared = service.prepare(req, self._pipeline)
        job = Job(key, req, req, route, msg.msg_id, msg.ignored_fields, project=prepared)
        self._board.submit(job)
        self._send_job(job, "progress", self._progress_now(job))

    def _on_cancel(self, route: list[bytes], msg: Message) -> None:
        key, msg_id = msg.content.get("target_request_key"), msg.content.get("target_msg_id")
        if key is not None:
            found = self._board.find(key)
        else:
            hit = self._board.find_msg_id(msg_id)
            found = hit[1] if hit else None
        reply: dict = {"cancelled": False, "state": "unknown"}
        reply.update({"target_request_key": key} if key is not None else {"target_msg_id": msg_id})
        queued = None
        if isinstance(found, Final):
            reply["state"] = "finished"
        elif isinstance(found, Job):
            found.cancel.set()
            if self._board.remove_queued(found):
                queued = found
                reply.update(cancelled=True, state="queued", step=0)
            else:
                reply.update(cancelled=True, state="running", step=found.step)
        self._reply(route, msg, "cancel_reply", reply)
        if queued is not None:
            self._finish(queued, "error", error_content(Cancelled("cancelled while queued"), step=0))

    def _on_status(self, route: list[bytes], msg: Message) -> None:
        running = self._board.running
        model = None
        if self._pipeline is not None:
            m = self._pipeline.manifest
            model = {"id": m["model_id"], "hash": m["package_hash"], "loaded": True}
        content = {
            "session": self.session,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "model": model,
            "provider": self._provider,
            "queue": {"length": self._board.length, "capacity": self._board.capacity},
            "running": None,
            "state": "draining" if self._draining else ("busy" if running else "ready"),
            "providers": self._providers,
            "server_version": __version__,
            "memory": {"rss_bytes": rss_bytes()},
        }
        if running is not None:
            content["running"] = {"msg_id": running.msg_id, "request_key": running.request_key,
                                  "step": running.step, "total": running.total,
                                  "elapsed_s": round(time.monotonic() - (running.started or running.submitted), 6)}
        self._reply(route, msg, "status_reply", content)

    def _on_list_models(self, route: list[bytes], msg: Message) -> None:
        models, current = [], None
        if self._pipeline is not None:
            current = self._pipeline.manifest["model_id"]
            models.append(model_info(self._pipeline.manifest))
        self._reply(route, msg, "list_models_reply", {"models": models, "current": current})

    def _on_shutdown(self, route: list[bytes], msg: Message) -> None:
        drain = msg.content.get("drain", True)
        pending = self._board.length + (1 if self._board.running else 0)
        self._reply(route, msg, "shutdown_reply", {"accepted": True, "pending": pending if drain else 0})
        log.info("shutdown requested by a client%s", f": {msg.content['reason']}" if msg.content.get("reason")
                 else "")
        self._begin_shutdown(drain)

    def _on_ping(self, route: list[bytes], msg: Message) -> None:
        self._reply(route, msg, "ping_reply", {})


def _log_project(job: Job, msg_type: str, content: dict) -> None:
    req = job.resolved
    began = job.started if job.started is not None else job.submitted
    prompt = req.prompt if len(req.prompt) <= 40 else req.prompt[:39] + "…"
    outcome = "ok" if msg_type != "error" else f"error {content.get('code')}"
    log.info("job %s project %r %d meshes %d triangles %d views %.2f s %s", job.request_key[:8], prompt,
             len(req.meshes), req.triangle_count, job.total, time.monotonic() - began, outcome)
