"""The sidecar client: talks docs/protocol.md to `aigc-bridge serve` over a ZeroMQ DEALER socket.

Imports only pyzmq, the standard library and aigc_bridge.protocol / request / errors, because the Blender
add-on bundles it (numpy and Pillow are used by ``GeneratedImage.to_numpy`` only, when present).

Reliability is the zguide's Lazy Pirate: every call has a silence budget (``timeout``). When a request
hears nothing from the server for ``timeout / (retries + 1)`` seconds, the client closes and reopens its
socket and resends every open request with a NEW msg_id and the SAME request_key; the server
de-duplicates by request_key, so a retry never runs a job twice. After ``retries`` silent resends the call
raises ``ServerUnavailable`` (code "unavailable"), so no call stays silent longer than ``timeout``. The
server acknowledges every generate at once and sends a keepalive progress event for every open job twice a
second, so silence means a dead (or unreachable) server, not a slow one. A server restart is survived the
same way: the resend reaches the new process.

Two ways to drive it: blocking calls (``generate``, ``status``...) and a non-blocking one for a UI timer
(``job = client.submit(...)``, then ``job.poll()`` with zero timeout until ``job.done``). A Client is not
thread-safe: use one per thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import zmq

from .errors import AigcError, Cancelled
from .input_image import InputImage
from .project_request import ProjectRequest
from .protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    REPLY_TO,
    REPLY_TYPES,
    Codec,
    Message,
    ProtocolError,
    generate_content,
    new_id,
    project_content,
)
from .request import IMAGE_FIELDS, ControlInput, GenerateRequest

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "Client",
    "ConnectionInfo",
    "GenerateResponse",
    "GeneratedImage",
    "Job",
    "JobCancelled",
    "Pending",
    "Progress",
    "as_input_image",
    "request_fields",
    "ProjectJob",
    "ProjectResponse",
    "ServerBusy",
    "ServerUnavailable",
]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3
_HEARTBEAT_MS = 1000  # ZMTP PING on the connection (libzmq), besides the server's per-job keepalives
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_REQUEST_FIELDS = frozenset(f.name for f in fields(GenerateRequest))
# Request fields a server older than protocol 1.2 does not know: it would ignore them and make a plain image.
_SINCE_1_2 = ("init", "strength", "mask", "mask_blur", "keep_unmasked", "controls", "depth", "seamless_band")
_DEFAULTS = {f.name: f.default for f in fields(GenerateRequest)}


class ServerUnavailable(AigcError):
    """No answer within the call's timeout: the server is not running, hung, or unreachable."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


class ServerBusy(AigcError):
    """The server's queue is full; try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__("busy", message)
        self.retry_after_s = retry_after_s


# --- connection file -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionInfo:
    """What ``aigc-bridge serve --connection-file`` writes: enough for a client to connect (like a
    Jupyter kernel's connection file). ``key`` is the HMAC key as text (its UTF-8 bytes sign frames)."""

    endpoint: str
    key: str | None = None
    signature_scheme: str = "hmac-sha256"
    server_public_key: str | None = None  # Z85 Curve key, when the server uses CurveZMQ
    protocol_version: str = PROTOCOL_VERSION
    session: str | None = None
    pid: int | None = None

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, indent=2) + "\n"

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConnectionInfo:
        """Read and check a connection file; every problem is an AigcError naming the field."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise AigcError("connection_file", f"cannot read connection file {path}: {exc.strerror}",
                            "connection_file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AigcError("connection_file", f"{path} is not a JSON connection file ({exc})",
                            "connection_file") from None
        if not isinstance(data, dict) or not isinstance(data.get("endpoint"), str):
            raise AigcError("connection_file", f"{path} has no endpoint", "endpoint")
        known = {f.name for f in fields(cls)}
        for name in ("key", "server_public_key", "signature_scheme", "protocol_version", "session"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise AigcError("connection_file", f"{path}: {name} must be a string", name)
        if data.get("signature_scheme", "hmac-sha256") != "hmac-sha256":
            raise AigcError("connection_file", f"{path}: only hmac-sha256 signatures are supported",
                            "signature_scheme")
        return cls(**{k: v for k, v in data.items() if k in known})


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode("utf-8") if isinstance(value, str) else value


def _load_client_keys(keys: tuple[bytes | str, bytes | str] | str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys, or the path of a ``.key_secret`` file made by `aigc-bridge keys`."""
    if isinstance(keys, tuple):
        public, secret = (_as_bytes(k) for k in keys)
        return public, secret  # type: ignore[return-value]
    return load_secret_key(keys, "client_keys")


def load_secret_key(path: str | os.PathLike, field: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file made by `aigc-bridge keys` (client and server alike)."""
    from zmq.auth import load_certificate

    try:
        public, secret = load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise AigcError("curve_key", f"cannot read Curve key {path}: {exc}", field) from None
    if secret is None:
        raise AigcError("curve_key", f"{path} holds no secret key: pass the .key_secret file", field)
    return public, secret


# --- what calls return -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One progress event of a job: ``stage`` "queued" (with ``queue_position``), "denoising", ...
    ``preview`` is a small PNG of the current latents when the server sends one."""

    step: int
    total: int
    stage: str | None = None
    count: int | None = None
    queue_position: int | None = None
    elapsed_s: float | None = None
    preview: bytes | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    @classmethod
    def from_message(cls, msg: Message) -> Progress:
        c = msg.content
        roles = [d.get("role") for d in c.get("buffers") or []]
        preview = msg.buffers[roles.index("preview")] if "preview" in roles else None
        return cls(c["step"], c["total"], c.get("stage"), c.get("count"), c.get("queue_position"),
                   c.get("elapsed_s"), preview)


@dataclass(frozen=True)
class OutputFile:
    """One more file of an image's output set (docs/outputs.md): a PBR map, a cube face, the skydome GLB, the
    provenance JSON. Its name is the caller's stem + ``suffix`` (``wall`` + ``_normal.png``)."""

    role: str
    suffix: str
    data: bytes
    mime: str
    colour_space: str | None


@dataclass(frozen=True)
class GeneratedImage:
    """One image as the server encoded it (PNG bytes), what made it (``metadata``: the effective request
    with this image's seed, model id and hash, provider, timings, tool version) and, since protocol 1.1,
    the rest of its output set (``outputs``)."""

    data: bytes
    mime: str
    seed: int
    width: int | None
    height: int | None
    metadata: dict = field(default_factory=dict)
    outputs: tuple[OutputFile, ...] = ()
    model_id: str | None = None
    model_hash: str | None = None
    provider: str | None = None

    def output(self, role: str) -> OutputFile | None:
        return next((o for o in self.outputs if o.role == role), None)

    def to_numpy(self):
        """H x W x 3 uint8 array (needs numpy and Pillow, which the client does not require)."""
        import io

        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as image:
            return np.asarray(image.convert("RGB"))


@dataclass(frozen=True)
class GenerateResponse:
    """A ``result``: images in order (seed, seed + 1, ...), the effective request, and the request's
    fields the server did not understand (``ignored_fields``: a newer option an older server skipped)."""

    images: tuple[GeneratedImage, ...]
    request: dict
    composed_prompt: dict
    ignored_fields: tuple[str, ...]
    request_key: str
    server_session: str
    warnings: tuple[str, ...] = ()  # what the engine noted: a prompt cut to its tokens, how an init was resized

    @property
    def seeds(self) -> list[int]:
        return [image.seed for image in self.images]

    def metadata(self, index: int) -> dict:
        return self.images[index].metadata

    @classmethod
    def from_message(cls, msg: Message) -> GenerateResponse:
        c = msg.content
        descriptors = c.get("buffers") or []
        prompts = {k: c["request"][k] for k in ("prompt", "negative_prompt")}  # sent once, not per image
        images = tuple(
            GeneratedImage(data=msg.buffers[img["buffer"]], mime=descriptors[img["buffer"]]["mime"],
                           seed=img["seed"], width=descriptors[img["buffer"]].get("width"),
                           height=descriptors[img["buffer"]].get("height"),
                           metadata={**prompts, **img["metadata"]} if "metadata" in img else {},
                           outputs=tuple(OutputFile(o["role"], o["suffix"], msg.buffers[o["buffer"]],
                                                    descriptors[o["buffer"]]["mime"], o.get("colour_space"))
                                         for o in img.get("outputs", ())),
                           model_id=img["model_id"], model_hash=img["model_hash"], provider=img["provider"])
            for img in c["images"])
        return cls(images, c["request"], c["composed_prompt"], tuple(c.get("ignored_fields", ())),
                   msg.request_key or "", msg.session, tuple(c.get("warnings", ())))


class JobCancelled(Cancelled):
    """The job was cancelled; ``step``: the denoising steps it had completed when it stopped."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


def _error_from(content: dict) -> AigcError:
    code, message, where = content["code"], content["message"], content.get("field")
    if code == "busy":
        return ServerBusy(message, content.get("retry_after_s"))
    if code == "cancelled":
        return JobCancelled(message, content.get("step"))
    return AigcError(code, message, where)


def as_input_image(value: object, field: str) -> InputImage:
    """An input image from what a caller has at hand: an InputImage, the encoded bytes, or a file path."""
    if isinstance(value, InputImage):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return InputImage.from_bytes(bytes(value), field)
    if isinstance(value, (str, os.PathLike)):
        return InputImage.from_path(value, field)
    raise AigcError("invalid_request", f"{field} must be image bytes, a file path or an InputImage, got "
                    f"{type(value).__name__}", field)


def _as_control(value: object, i: int) -> ControlInput:
    """A ControlInput, or a dict with name, image (bytes, path or InputImage), scale, start, end."""
    if isinstance(value, ControlInput):
        return value
    if not isinstance(value, dict) or "image" not in value:
        raise AigcError("invalid_request", f"controls[{i}] must be a ControlInput or a dict with name and image",
                        f"controls[{i}]")
    return ControlInput(**{**value, "image": as_input_image(value["image"], f"controls[{i}].image")})


def _image_fields(fields: dict) -> dict:
    """``fields`` with every input image as an InputImage and controls as a tuple of ControlInput."""
    out = dict(fields)
    for name in IMAGE_FIELDS:
        if out.get(name) is not None:
            out[name] = as_input_image(out[name], name)
    if out.get("controls"):
        out["controls"] = tuple(_as_control(c, i) for i, c in enumerate(out["controls"]))
    return out


def request_fields(request: GenerateRequest) -> dict:
    """The fields of ``request`` that differ from the defaults, as ``Client.generate`` takes them (input
    images and controls as they are, not as their records)."""
    defaults = GenerateRequest(prompt=request.prompt)
    return {f.name: getattr(request, f.name) for f in fields(GenerateRequest)
            if f.name != "prompt" and getattr(request, f.name) != getattr(defaults, f.name)}


def _minor(version: str) -> int:
    try:
        return int(version.split(".")[1])
    except (IndexError, ValueError):
        return 0


# --- calls and jobs --------------------------------------------------------------------------------------


class _Call:
    """One request in flight: its current attempt (msg_id), silence clock, events and outcome."""

    def __init__(self, msg_type: str, content: dict, request_key: str | None, buffers: tuple[bytes, ...] = (),
                 needs: tuple[str, ...] = ()) -> None:
        self.msg_type = msg_type
        self.content = content
        self.request_key = request_key
        self.buffers = buffers
        self.needs = needs  # fields that need a protocol 1.2 server
        self.msg_id = ""
        self.silent_attempts = 0  # attempts since the server last said anything about this call
        self.last_heard = time.monotonic()
        self.events: deque[Progress] = deque()
        self.reply: Message | None = None
        self.error: AigcError | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None


class _Handle:
    """A request in flight, sent without blocking: ``done`` once its final reply or error is in."""

    def __init__(self, client: Client, call: _Call) -> None:
        self._client = client
        self._call = call

    @property
    def done(self) -> bool:
        return self._call.done

    @property
    def error(self) -> AigcError | None:
        return self._call.error


class Pending(_Handle):
    """Any other request sent without blocking (``Client.send``): ``poll()`` until ``done``, then
    ``reply`` (the reply's content) or ``error``."""

    @property
    def reply(self) -> dict | None:
        return self._call.reply.content if self._call.reply is not None else None

    def poll(self) -> bool:
        """Receive what has arrived (zero timeout); True once the request is done."""
        if not self._call.done:
            self._client.poll(0.0)
        return self._call.done


class Job(_Handle):
    """A generate submitted without blocking. Drive it from a timer: ``job.poll()`` (never blocks)
    returns the progress events since the last poll; then ``job.done``, ``job.result``, ``job.error``."""

    def __init__(self, client: Client, call: _Call) -> None:
        super().__init__(client, call)
        self._result: GenerateResponse | None = None
        self.progress: Progress | None = None

    @property
    def request_key(self) -> str:
        return self._call.request_key or ""

    @property
    def result(self) -> GenerateResponse | None:
        if self._result is None and self._call.reply is not None:
            self._result = GenerateResponse.from_message(self._call.reply)
        return self._result

    def poll(self) -> list[Progress]:
        """Receive what has arrived (zero timeout) and return this job's new progress events."""
        if not self._call.done:
            self._client.poll(0.0)
        return self._take()

    def wait(self, timeout: float | None = None) -> GenerateResponse:
        """Block until the job ends (``timeout``: overall limit in seconds, None = until it ends or the
        server goes silent for the client's timeout); raise its error if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._call.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise AigcError("timeout", f"job {self.request_key} did not finish within {timeout} s")
            self._client._pump(0.25 if left is None else min(left, 0.25))
            self._take()
        if self._call.error is not None:
            raise self._call.error
        return self.result  # type: ignore[return-value]

    def cancel(self) -> None:
        """Ask the server to cancel this job (non-blocking); it then ends with a "cancelled" error."""
        if not self._call.done:
            self._client._start("cancel", {"target_request_key": self.request_key}, None)

    def _take(self) -> list[Progress]:
        events = list(self._call.events)
        self._call.events.clear()
        if events:
            self.progress = events[-1]
        return events


# --- the client ------------------------------------------------------------------------------------------


class Client:
    """A connection to one sidecar. ``key``: the HMAC key (bytes or text; None = unsigned, loopback only).
    ``timeout``: the most seconds any call waits in silence before ``ServerUnavailable``; ``retries``:
    resends within it. Curve: ``server_public_key`` (Z85) and ``client_keys`` ((public, secret) Z85 or a
    ``.key_secret`` file; a throwaway pair when omitted, for servers that admit any key)."""

    def __init__(
        self,
        endpoint: str,
        key: bytes | str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        retries: int = DEFAULT_RETRIES,
        server_public_key: bytes | str | None = None,
        client_keys: tuple[bytes | str, bytes | str] | str | os.PathLike | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.retries = int(retries)
        self._codec = Codec(_as_bytes(key), accept=REPLY_TYPES)
        self._server_key = _as_bytes(server_public_key)
        if self._server_key is not None:
            self._curve = _load_client_keys(client_keys) if client_keys is not None else zmq.curve_keypair()
        elif client_keys is not None:
            raise ValueError("client_keys need server_public_key")
        else:
            self._curve = None
        self._context = context or zmq.Context.instance()
        self._pending: dict[str, _Call] = {}  # current msg_id -> call
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self.server_session: str | None = None  # changes when the server restarted
        self.server_version: str | None = None  # the protocol version of the server's last message
        self._open()

    @classmethod
    def from_connection_file(cls, path: str | os.PathLike, **kwargs) -> Client:
        """Connect with what `aigc-bridge serve --connection-file PATH` wrote (endpoint, key, Curve key)."""
        info = ConnectionInfo.load(path)
        return cls(info.endpoint, key=info.key, server_public_key=info.server_public_key, **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket; calls still open are dropped (the server finishes or cancels them itself)."""
        self._close_socket()
        self._pending.clear()

    # --- blocking calls ----------------------------------------------------------------------------------

    def generate(self, prompt: str, *, on_progress: Callable[[Progress], object] | None = None,
                 request_key: str | None = None, **fields: object) -> GenerateResponse:
        """Generate and wait. ``fields``: GenerateRequest's (steps, seed, width...), validated here;
        others are sent as is and come back in ``ignored_fields`` if the server does not know them.
        ``on_progress`` returning False cancels the job (which then raises ``JobCancelled``)."""
        job = self.submit(prompt, request_key=request_key, **fields)
        for item in self._follow(job):
            if isinstance(item, GenerateResponse):
                return item
            if on_progress is not None and on_progress(item) is False:
                job.cancel()
        raise AssertionError("unreachable: _follow ends with a response or raises")

    def generate_iter(self, prompt: str, *, request_key: str | None = None,
                      **fields: object) -> Iterator[Progress | GenerateResponse]:
        """Yield Progress events, then the GenerateResponse; raise the job's error. Closing the
        iterator early (or Ctrl-C) cancels the job on the server."""
        yield from self._follow(self.submit(prompt, request_key=request_key, **fields))

    def _follow(self, job: Job) -> Iterator[Progress | GenerateResponse]:
        try:
            while not job.done:
                self._pump(0.25)
                yield from job._take()
            yield from job._take()
        except BaseException:
            if not job.done:
                self._try_cancel(job)
            raise
        if job.error is not None:
            raise job.error
        yield job.result  # type: ignore[misc]

    def cancel(self, target: Job | str, *, by: str = "request_key") -> dict:
        """Cancel a job (a Job, or its request_key; ``by="msg_id"`` for a msg_id). Returns the
        ``cancel_reply`` content: ``cancelled``, ``state`` (queued, running, finished, unknown), ``step``."""
        if isinstance(target, Job):
            target = target.request_key
        if by not in ("request_key", "msg_id"):
            raise ValueError("by must be request_key or msg_id")
        return self._call("cancel", {f"target_{by}": target})

    def status(self) -> dict:
        """The ``status_reply``: model, provider, queue length/capacity, running job, memory, session,
        uptime. Answered even while a job runs, so it tells a dead server from a busy one."""
        return self._call("status", {})

    def list_models(self) -> list[dict]:
        return self._call("list_models", {})["models"]

    def ping(self) -> float:
        """Round trip to the server's socket loop, in seconds."""
        start = time.perf_counter()
        self._call("ping", {})
        return time.perf_counter() - start

    def shutdown(self, drain: bool = True, reason: str = "") -> dict:
        """Stop the server: ``drain`` finishes queued and running jobs first, else cancels them."""
        return self._call("shutdown", {"drain": drain, "reason": reason[:256]})

    # --- non-blocking ------------------------------------------------------------------------------------

    def submit(self, prompt: str, *, request_key: str | None = None, **fields: object) -> Job:
        """Send a generate and return at once; follow it with ``job.poll()`` / ``job.wait()``. Input images
        (``init``, ``mask``, ``depth``, each control's ``image``) may be InputImages, encoded bytes or file
        paths; they travel as binary frames (protocol 1.2), and a server older than 1.2 is refused with
        ``unsupported_version`` as soon as it answers, instead of silently making a plain image."""
        fields = _image_fields(fields)
        known = {k: v for k, v in fields.items() if k in _REQUEST_FIELDS}
        GenerateRequest(prompt=prompt, **known)  # type: ignore[arg-type]  # validate before sending
        content, buffers = generate_content({"prompt": prompt, **fields})
        needs = tuple(k for k in _SINCE_1_2 if k in fields and fields[k] != _DEFAULTS[k])
        call = _Call("generate", content, request_key or new_id(), tuple(buffers), needs)
        self._send(call)
        return Job(self, call)

    def generate_request(self, request: GenerateRequest, **kwargs) -> GenerateResponse:
        """Generate ``request`` (a GenerateRequest, as the in-process engine takes it) on the server."""
        return self.generate(request.prompt, **kwargs, **request_fields(request))

    def submit_project(self, request: ProjectRequest, *, request_key: str | None = None) -> ProjectJob:
        """Send a project request (texture meshes from their shape; its arrays travel as binary frames) and
        return at once; follow it like a generate (``poll``, ``wait``, ``cancel``: between views)."""
        content, buffers = project_content(request)
        call = _Call("project", content, request_key or new_id(), tuple(buffers))
        self._send(call)
        return ProjectJob(self, call)

    def project(self, request: ProjectRequest, *, on_progress: Callable[[Progress], object] | None = None,
                request_key: str | None = None) -> ProjectResponse:
        """Texture and wait; ``on_progress`` (one event per view stage) returning False cancels."""
        job = self.submit_project(request, request_key=request_key)
        for item in self._follow(job):
            if isinstance(item, ProjectResponse):
                return item
            if on_progress is not None and on_progress(item) is False:
                job.cancel()
        raise AssertionError("unreachable: _follow ends with a response or raises")

    def send(self, msg_type: str, content: dict | None = None) -> Pending:
        """Send any other request (status, list_models, ping, cancel, shutdown) without waiting: a UI
        can show the server's status from a timer with ``pending.poll()``."""
        if msg_type not in REPLY_TO or msg_type == "generate":
            raise ValueError(f"send takes {', '.join(sorted(set(REPLY_TO) - {'generate'}))}; use submit "
                             "for generate")
        return Pending(self, self._start(msg_type, content or {}, None))

    def poll(self, timeout: float = 0.0) -> None:
        """Receive and dispatch what arrives within ``timeout`` seconds (0: never blocks), and apply
        the retry/timeout rules to open calls. Jobs' ``poll`` calls this."""
        self._pump(timeout)

    # --- machinery ---------------------------------------------------------------------------------------

    def _call(self, msg_type: str, content: dict) -> dict:
        call = self._start(msg_type, content, None)
        while not call.done:
            self._pump(0.25)
        if call.error is not None:
            raise call.error
        return call.reply.content  # type: ignore[union-attr]

    def _try_cancel(self, job: Job, wait_s: float = 1.0) -> None:
        """Best effort while already failing (Ctrl-C, iterator closed): wait briefly for the reply, so
        the cancel has left before a close (linger 0) could drop it."""
        try:
            call = self._start("cancel", {"target_request_key": job.request_key}, None)
            deadline = time.monotonic() + wait_s
            while not call.done and time.monotonic() < deadline:
                self._pump(0.05)
        except Exception:
            pass

    def _start(self, msg_type: str, content: dict, request_key: str | None) -> _Call:
        call = _Call(msg_type, content, request_key)
        self._send(call)
        return call

    def _send(self, call: _Call) -> None:
        call.msg_id = new_id()
        frames = self._codec.encode(call.msg_type, call.content, request_key=call.request_key,
                                    msg_id=call.msg_id, buffers=call.buffers)
        self._pending[call.msg_id] = call
        with contextlib.suppress(zmq.Again):  # queue to the server full: the silence rule resends
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)  # type: ignore[union-attr]

    def _open(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        sock.linger = 0
        sock.maxmsgsize = MAX_FRAME_BYTES
        sock.heartbeat_ivl = _HEARTBEAT_MS
        sock.heartbeat_timeout = 3 * _HEARTBEAT_MS
        sock.reconnect_ivl = 100
        sock.reconnect_ivl_max = 1000
        if self._curve is not None:
            sock.curve_serverkey = self._server_key
            sock.curve_publickey, sock.curve_secretkey = self._curve
        self._monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        sock.connect(self.endpoint)
        self._socket = sock
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def _close_socket(self) -> None:
        if self._socket is None:
            return
        for sock in (self._socket, self._monitor):
            self._poller.unregister(sock)
        self._socket.disable_monitor()
        self._monitor.close(linger=0)  # type: ignore[union-attr]
        self._socket.close(linger=0)
        self._socket = self._monitor = None

    def _pump(self, timeout: float) -> None:
        if self._socket is None:
            raise AigcError("closed", "this client was closed")
        deadline = time.monotonic() + timeout
        while True:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(min(wait_ms, self._next_deadline_ms())))
            if self._monitor in ready:
                self._on_monitor()
            if self._socket in ready:
                self._receive_all()
            self._apply_deadlines()
            if ready or time.monotonic() >= deadline:
                return

    def _next_deadline_ms(self) -> int:
        if not self._pending:
            return 250
        per_attempt = self.timeout / (self.retries + 1)
        soonest = min(call.last_heard for call in self._pending.values()) + per_attempt
        return max(0, int((soonest - time.monotonic()) * 1000) + 1)

    def _receive_all(self) -> None:
        while self._socket is not None:
            try:
                frames = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._dispatch(frames)

    def _dispatch(self, frames: list[bytes]) -> None:
        try:
            msg = self._codec.decode(frames)
        except ProtocolError as err:
            if err.code == "bad_signature":
                self._fail_all(AigcError(
                    "bad_signature", f"the server at {self.endpoint} does not sign with this client's key "
                    "(or signs while the client has none): use the key from its connection file", "key"))
            return  # anything else unreadable from the server is dropped, never trusted
        self.server_session = msg.session
        self.server_version = msg.version
        call = self._pending.get(msg.parent_id or "")
        if call is not None and call.needs and _minor(msg.version) < 2:
            self._too_old(call, msg.version)
            return
        if call is None:
            if msg.msg_type == "error" and msg.parent_id is None:  # the server could not read our message
                self._fail_all(AigcError(msg.content["code"], "the server refused a message from this "
                                         f"client: {msg.content['message']}", msg.content.get("field")))
            return  # a late reply to an abandoned attempt
        call.last_heard = time.monotonic()
        call.silent_attempts = 0
        if msg.msg_type == "progress":
            call.events.append(Progress.from_message(msg))
            return
        del self._pending[call.msg_id]
        if msg.msg_type == "error":
            call.error = _error_from(msg.content)
        elif msg.msg_type == REPLY_TO[call.msg_type]:
            call.reply = msg
        else:
            call.error = AigcError("malformed", f"the server answered a {call.msg_type} with a "
                                   f"{msg.msg_type}", "header.msg_type")

    def _on_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor is not None:
            try:
                event = recv_monitor_message(self._monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                message = (f"the server at {self.endpoint} refused this client's Curve key (ZAP status "
                           f"{int(event['value'])}): its operator must add this client's public key "
                           f"{self._curve[0].decode() if self._curve else ''} to --authorized-keys")
            elif self._curve is None:
                message = (f"security handshake with {self.endpoint} failed: the server expects CurveZMQ; "
                           "pass server_public_key (or use its connection file) and client_keys")
            else:
                message = (f"security handshake with {self.endpoint} failed: wrong server_public_key, or "
                           "the server does not use CurveZMQ")
            self._fail_all(AigcError("unauthorized", message, "client_keys"))

    def _apply_deadlines(self) -> None:
        if not self._pending:
            return
        now = time.monotonic()
        per_attempt = self.timeout / (self.retries + 1)
        expired = [c for c in self._pending.values() if now - c.last_heard >= per_attempt]
        if not expired:
            return
        for call in expired:
            call.silent_attempts += 1
            if call.silent_attempts > self.retries:
                del self._pending[call.msg_id]
                call.error = ServerUnavailable(
                    f"no reply from the aigc-bridge server at {self.endpoint} within {self.timeout:g} s "
                    f"({call.silent_attempts} attempts): is it running? (`aigc-bridge serve`)")
        # Lazy Pirate: a fresh socket drops whatever the old one still queued, then every open call is
        # resent (new msg_id, same request_key) because replies to the old socket cannot arrive any more.
        calls = list(self._pending.values())
        self._pending.clear()
        self._close_socket()
        self._open()
        for call in calls:
            call.last_heard = now
            self._send(call)

    def _too_old(self, call: _Call, version: str) -> None:
        """A server older than 1.2 would ignore the image fields and make a plain image: stop the job."""
        del self._pending[call.msg_id]
        call.error = AigcError(
            "unsupported_version", f"{', '.join(call.needs)} need protocol 1.2; the server at {self.endpoint} speaks "
            f"{version} and would ignore them: update the sidecar (aigc-bridge serve)", call.needs[0])
        with contextlib.suppress(AigcError):
            self._start("cancel", {"target_request_key": call.request_key}, None)

    def _fail_all(self, error: AigcError) -> None:
        for call in self._pending.values():
            call.error = error
        self._pending.clear()


# --- project: texture meshes from their shape ------------------------------------------------------------


@dataclass(frozen=True)
class BakedTexture:
    mesh: str
    data: bytes  # PNG, 8-bit sRGB, for the mesh's UV map
    coverage: float  # share of the surface some view saw (the rest was filled)


@dataclass(frozen=True)
class ProjectResponse:
    """A finished project: one texture per mesh, the per-view reports, warnings and how views were conditioned
    (``mode``: controlnet, depth or text; ``mode_text`` says it for people)."""

    textures: list[BakedTexture]
    views: list[dict]
    warnings: list[str]
    mode: str
    mode_text: str
    timings: dict
    model_id: str | None
    request_key: str | None

    @classmethod
    def from_message(cls, msg: Message) -> ProjectResponse:
        c = msg.content
        textures = [BakedTexture(t["mesh"], msg.buffers[t["buffer"]], t["coverage"]) for t in c["textures"]]
        return cls(textures, list(c["views"]), list(c.get("warnings", [])), c["mode"], c.get("mode_text", ""),
                   dict(c.get("timings", {})), c.get("model_id"), msg.request_key)


class ProjectJob(Job):
    """A project submitted without blocking: as ``Job``, with a ``ProjectResponse`` as its result."""

    @property
    def result(self) -> ProjectResponse | None:  # type: ignore[override]
        if self._result is None and self._call.reply is not None:
            self._result = ProjectResponse.from_message(self._call.reply)
        return self._result
