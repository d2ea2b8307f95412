"""The one codec for docs/protocol.md: ZeroMQ multipart frames <-> validated ``Message`` objects.

Why a single module: the server, the batch tools and the Blender client must agree byte for byte, so the
spec lives beside exactly one implementation (as jupyter_client keeps ``Session`` beside messaging.rst).

Standard library only, plus ``aigc_bridge.request`` / ``aigc_bridge.errors``: the client is bundled into
Blender. Nothing received is ever unpickled or evaluated. Frames stay bytes, JSON is parsed with strict
hooks (no NaN, no duplicate keys, bounded numbers), and every failure of ``Codec.decode`` is a
``ProtocolError`` carrying a code, a message and a field -- never another exception type.

Wire layout (after any routing-id frames a ROUTER adds)::

    MAGIC  signature  header  parent_id  content  buffer*
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import NoReturn

from .errors import AigcError, InvalidRequest
from .input_image import MAX_INPUT_BYTES, InputImage
from .project_request import MAX_ARRAY_BYTES, MAX_CAMERAS, MAX_MESHES, ProjectRequest
from .request import (
    IMAGE_FIELDS,
    MAX_CONTROLS,
    MAX_COUNT,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    ControlInput,
    GenerateRequest,
)

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "ERROR_CODES",
    "IMAGE_MIMES",
    "INPUT_ROLE",
    "MAGIC",
    "MAX_BUFFERS",
    "MAX_BUFFER_BYTES",
    "MAX_CLOCK_SKEW_S",
    "MAX_CONTENT_BYTES",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_FRAMES",
    "MAX_FRAME_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_ID_CHARS",
    "MAX_IGNORED_FIELDS",
    "MAX_INPUT_BUFFERS",
    "MAX_MESSAGE_BYTES",
    "MAX_PREVIEW_BYTES",
    "MAX_REQUEST_FRAME_BYTES",
    "MAX_ROUTING_IDS",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "REPLAY_HISTORY_SIZE",
    "REPLY_TO",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "Codec",
    "Message",
    "ProtocolError",
    "error_content",
    "generate_content",
    "new_id",
    "split_routing",
    "with_routing",
]

PROTOCOL_VERSION = "1.2"
_MAJOR, _MINOR = (int(part) for part in PROTOCOL_VERSION.split("."))
# Since 1.2 a generate carries its input images (init, mask, depth, controls[i].image) as buffers of this role,
# each named by one field of the content ({"buffer": index}).
INPUT_ROLE = "input"
MAX_INPUT_BUFFERS = len(IMAGE_FIELDS) + MAX_CONTROLS

# The delimiter between routing ids and the message, like Jupyter's b"<IDS|MSG>". It does not carry the
# version: frames 0-2 (magic, signature, header) keep this layout in every major version, so an old
# peer can always read the header and answer "unsupported_version" instead of "malformed".
MAGIC = b"<AIGC|MSG>"

# --- limits (the server also derives zmq options from these) -------------------------------------------
MAX_BUFFERS = 256  # 16 images x (image + PBR maps, or backdrop + 6 cube faces + skydome) + JSON
MAX_FRAMES = 5 + MAX_BUFFERS  # magic, signature, header, parent_id, content, buffers
MAX_ROUTING_IDS = 16  # routing-id frames split_routing looks through (one per ROUTER/broker hop)
MAX_ID_CHARS = 128  # msg_id, request_key, session, parent_id
MAX_HEADER_BYTES = 8 * 1024
# Two 100k-character prompts, JSON-escaped (up to 6 bytes a character), echoed back in a result.
MAX_CONTENT_BYTES = 4 * 1024 * 1024
# One 4096 x 4096 RGBA float32 EXR is 256 MiB uncompressed; headroom for headers and 16-bit PNG.
MAX_BUFFER_BYTES = 512 * 1024 * 1024
MAX_PREVIEW_BYTES = 1024 * 1024
MAX_MESSAGE_BYTES = 2 * 1024 * 1024 * 1024  # all frames together
# libzmq's ZMQ_MAXMSGSIZE limits each frame (message part), not the multipart total: clients set it to
# MAX_FRAME_BYTES; the server sets MAX_REQUEST_FRAME_BYTES: the content, or one input image (64 MiB).
MAX_FRAME_BYTES = max(MAX_BUFFER_BYTES, MAX_CONTENT_BYTES)
MAX_REQUEST_FRAME_BYTES = max(MAX_CONTENT_BYTES, MAX_INPUT_BYTES, MAX_ARRAY_BYTES)  # and a project's mesh arrays
MAX_ERROR_MESSAGE_CHARS = 4096
MAX_IGNORED_FIELDS = 256  # unknown fields reported per message; more are dropped from the report
_MAX_INT_DIGITS = 20  # JSON integer literals; bounds parse time and keeps ints within int64

# --- replay protection ------------------------------------------------------------------------------
REPLAY_HISTORY_SIZE = 2**16  # as jupyter_client's digest_history_size
DEFAULT_MAX_AGE_S = 300.0  # signed messages older than this are refused ("expired")
MAX_CLOCK_SKEW_S = 60.0  # how far in the future a signed message may be dated

# --- message types ------------------------------------------------------------------------------------
REPLY_TO: dict[str, str] = {
    "generate": "result",
    "cancel": "cancel_reply",
    "status": "status_reply",
    "list_models": "list_models_reply",
    "shutdown": "shutdown_reply",
    "ping": "ping_reply",
    "project": "project_result",
}
REQUEST_TYPES = frozenset(REPLY_TO)
REPLY_TYPES = frozenset(REPLY_TO.values()) | {"progress", "error"}
MESSAGE_TYPES = REQUEST_TYPES | REPLY_TYPES
_NEEDS_REQUEST_KEY = frozenset({"generate", "project"})

ERROR_CODES = (
    "malformed",  # frames, UTF-8, JSON or a reply's content are not what the spec says
    "too_large",  # a limit above was exceeded
    "bad_signature",  # missing, wrong, or unexpected HMAC
    "replayed",  # the exact frames were seen before
    "expired",  # signed message dated outside [now - max_age_s, now + MAX_CLOCK_SKEW_S]
    "unsupported_version",  # a different MAJOR version
    "unknown_type",  # msg_type this version does not know
    "unexpected_type",  # a known msg_type this side does not accept (a request sent to a client...)
    "invalid_request",  # a request's content failed validation
)

_ID_RE = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_ID_CHARS}}}")
_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_CODE_RE = _TYPE_RE
_IDENT_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
# An output's file-name suffix after the client's chosen stem ("_normal.png", ".json"): never a path.
_SUFFIX_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_MIME_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+\-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+\-]{0,63}")
_VERSION_RE = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})")
_DATE_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})"
)
_MAGIC_BYTES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/x-exr": b"\x76\x2f\x31\x01"}
IMAGE_MIMES = tuple(_MAGIC_BYTES)


class ProtocolError(AigcError):
    """Any message the codec refuses. ``msg_id``/``msg_type``/``request_key`` are set when the header was
    authentic and readable, so the server can answer the request with an ``error`` whose parent is it."""

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        *,
        msg_id: str | None = None,
        msg_type: str | None = None,
        request_key: str | None = None,
    ) -> None:
        super().__init__(code, message, field)
        self.msg_id = msg_id
        self.msg_type = msg_type
        self.request_key = request_key


@dataclass(frozen=True, eq=False)
class Message:
    """A decoded, verified message. ``content`` is the parsed JSON as sent; trust only documented fields
    (``ignored_fields`` lists the others). For ``generate``, ``request`` holds the validated request."""

    msg_type: str
    msg_id: str
    header: dict
    parent_id: str | None
    content: dict
    buffers: tuple[bytes, ...] = ()
    ignored_fields: tuple[str, ...] = ()
    request: GenerateRequest | ProjectRequest | None = None

    def __repr__(self) -> str:  # never dump megabytes of image data into a log line
        sizes = ", ".join(str(len(b)) for b in self.buffers)
        return (f"Message({self.msg_type} {self.msg_id} parent={self.parent_id} "
                f"request_key={self.request_key} buffers=[{sizes}] ignored={list(self.ignored_fields)})")

    @property
    def request_key(self) -> str | None:
        return self.header.get("request_key")

    @property
    def session(self) -> str:
        return self.header["session"]

    @property
    def version(self) -> str:
        return self.header["version"]

    @property
    def is_request(self) -> bool:
        return self.msg_type in REQUEST_TYPES


def new_id() -> str:
    """A fresh msg_id / request_key / session (uuid4 hex): unique without coordination."""
    return uuid.uuid4().hex


def split_routing(frames: Sequence[object]) -> tuple[list[bytes], list]:
    """Split what a ROUTER received into (routing ids, message frames starting at MAGIC).

    Raises ProtocolError("malformed") when no MAGIC frame is among the first MAX_ROUTING_IDS + 1 frames.
    """
    if not isinstance(frames, (list, tuple)):
        raise ProtocolError("malformed", "frames must be a list of byte strings", "frames")
    for i, frame in enumerate(frames[: MAX_ROUTING_IDS + 1]):
        if _is_magic(frame):
            return [_to_bytes(f, "routing_id") for f in frames[:i]], list(frames[i:])
    raise ProtocolError("malformed", f"no {MAGIC!r} delimiter frame: not an aigc-bridge message", "magic")


def with_routing(routing_ids: Sequence[bytes], frames: Sequence[bytes]) -> list[bytes]:
    """Prepend the routing ids split_routing returned, so a ROUTER sends the reply to that peer."""
    return [*routing_ids, *frames]


def error_content(error: AigcError, **extra: object) -> dict:
    """The content of an ``error`` message for any AigcError, cut to the wire limits."""
    code = error.code if isinstance(error.code, str) and _CODE_RE.fullmatch(error.code) else "internal"
    content: dict = {"code": code, "message": str(error.message)[:MAX_ERROR_MESSAGE_CHARS]}
    content["field"] = None if error.field is None else str(error.field)[:256]
    content.update(extra)
    return content


class Codec:
    """Encodes and decodes messages for one peer; holds the key and the replay history.

    ``key``: the shared HMAC key (None or b"" = no signing, no replay protection: loopback/IPC only).
    ``session``: this peer's session id (new one per process; a changed session means a restart).
    ``max_age_s``: with a key, refuse messages dated more than this long ago (None = no age check).
    ``accept``: the msg_types decode lets through (server: REQUEST_TYPES; client: REPLY_TYPES).
    ``clock``: wall clock in seconds since the epoch (tests inject one).
    Thread-safe: the replay history is guarded by a lock.
    """

    def __init__(
        self,
        key: bytes | None,
        session: str | None = None,
        *,
        max_age_s: float | None = DEFAULT_MAX_AGE_S,
        accept: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
        history_size: int = REPLAY_HISTORY_SIZE,
    ) -> None:
        if key is not None and not isinstance(key, bytes):
            raise TypeError("key must be bytes or None")
        self.session = session if session is not None else new_id()
        if not isinstance(self.session, str) or not _ID_RE.fullmatch(self.session):
            raise ValueError(f"session must match {_ID_RE.pattern}")
        self._key = key or None
        self.max_age_s = max_age_s
        self.accept = frozenset(accept) if accept is not None else MESSAGE_TYPES
        self._clock = clock
        self._history_size = history_size
        self._seen: dict[bytes, float] = {}  # signature -> message date (epoch s)
        self._lock = threading.Lock()
        self._rng = random.SystemRandom()

    @property
    def signed(self) -> bool:
        return self._key is not None

    # --- encoding -----------------------------------------------------------------------------------

    def encode(
        self,
        msg_type: str,
        content: dict,
        *,
        parent_id: str | None = None,
        buffers: Sequence[bytes] = (),
        request_key: str | None = None,
        msg_id: str | None = None,
    ) -> list[bytes]:
        """Build the frames of one message (header, date, signature included).

        ``msg_id`` defaults to new_id(); pass your own to correlate replies. The result is checked with
        the same rules decode applies, so a sender learns at once (ProtocolError) what its peer would
        refuse.
        """
        header: dict = {
            "msg_id": msg_id if msg_id is not None else new_id(),
            "msg_type": msg_type,
            "version": PROTOCOL_VERSION,
            "session": self.session,
            "date": _format_date(self._clock()),
        }
        if request_key is not None:
            header["request_key"] = request_key
        if parent_id is not None and not isinstance(parent_id, str):
            raise ProtocolError("malformed", "parent_id must be a string", "parent_id")
        body = [
            _dumps(header, "header"),
            (parent_id or "").encode("utf-8", "replace"),
            _dumps(content, "content"),
            *(_to_bytes(b, f"buffers[{i}]") for i, b in enumerate(buffers)),
        ]
        frames = [MAGIC, b"", *body]
        if len(buffers) > MAX_BUFFERS:
            raise ProtocolError("too_large", f"at most {MAX_BUFFERS} buffers, got {len(buffers)}", "buffers")
        self._check_sizes(frames)
        self._parse(frames, b"")
        frames[1] = self._sign(body)
        return frames

    def reply(
        self, request: Message, msg_type: str, content: dict, buffers: Sequence[bytes] = ()
    ) -> list[bytes]:
        """Encode an event or reply to ``request``: parent_id and request_key are copied from it."""
        return self.encode(
            msg_type, content, parent_id=request.msg_id, buffers=buffers, request_key=request.request_key
        )

    def encode_error(
        self, error: AigcError, *, parent_id: str | None = None, request_key: str | None = None,
        **extra: object,
    ) -> list[bytes]:
        """Encode an ``error``; a ProtocolError's attribution (msg_id, request_key) is used by default."""
        if isinstance(error, ProtocolError):
            parent_id = parent_id if parent_id is not None else error.msg_id
            request_key = request_key if request_key is not None else error.request_key
        return self.encode("error", error_content(error, **extra), parent_id=parent_id,
                           request_key=request_key)

    # --- decoding -----------------------------------------------------------------------------------

    def decode(self, frames: Sequence[object]) -> Message:
        """Verify and parse frames that start at MAGIC (use split_routing first on a ROUTER).

        Checks, in order: frame count and sizes, signature, header, version, replay, age, msg_type,
        parent_id, content schema and buffers. Raises ProtocolError only.
        """
        try:
            if not isinstance(frames, (list, tuple)):
                raise ProtocolError("malformed", "frames must be a list of byte strings", "frames")
            if not 5 <= len(frames) <= MAX_FRAMES:
                raise ProtocolError(
                    "malformed" if len(frames) < 5 else "too_large",
                    f"a message has 5 to {MAX_FRAMES} frames, got {len(frames)}", "frames")
            raw = [_to_bytes(f, "frames") for f in frames]
            self._check_sizes(raw)
            return self._parse(raw, raw[1], verify=True)
        except ProtocolError:
            raise
        except Exception as exc:  # a codec bug must not crash a server loop or Blender
            raise ProtocolError("malformed", f"internal decoder error ({type(exc).__name__}: {exc})",
                                "frames") from exc

    # --- internals ----------------------------------------------------------------------------------

    def _sign(self, body: Sequence[bytes]) -> bytes:
        if self._key is None:
            return b""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for frame in body:  # length-prefixed: frame boundaries cannot be shifted under one signature
            mac.update(len(frame).to_bytes(8, "big"))
            mac.update(frame)
        return mac.hexdigest().encode("ascii")

    @staticmethod
    def _check_sizes(frames: list[bytes]) -> None:
        if frames[0] != MAGIC:
            raise ProtocolError(
                "malformed", f"frame 0 must be {MAGIC!r} (routing ids not split off?)", "magic")
        limits = (("header", MAX_HEADER_BYTES), ("parent_id", MAX_ID_CHARS), ("content", MAX_CONTENT_BYTES))
        for (name, limit), frame in zip(limits, frames[2:5]):
            if len(frame) > limit:
                raise ProtocolError("too_large", f"{name} is {len(frame)} bytes; the limit is {limit}", name)
        total = 0
        for i, frame in enumerate(frames[5:]):
            if len(frame) > MAX_BUFFER_BYTES:
                raise ProtocolError(
                    "too_large", f"buffer {i} is {len(frame)} bytes; the limit is {MAX_BUFFER_BYTES}",
                    f"buffers[{i}]")
            total += len(frame)
        if total > MAX_MESSAGE_BYTES:
            raise ProtocolError(
                "too_large", f"message is {total} bytes; the limit is {MAX_MESSAGE_BYTES}", "buffers")

    def _parse(self, frames: list[bytes], signature: bytes, verify: bool = False) -> Message:
        who: dict = {}
        try:
            return self._parse_attributed(frames, signature, verify, who)
        except ProtocolError as err:
            if err.msg_id is None:
                err.msg_id = who.get("msg_id")
                err.msg_type = who.get("msg_type")
                err.request_key = who.get("request_key")
            raise

    def _parse_attributed(self, frames: list[bytes], signature: bytes, verify: bool, who: dict) -> Message:
        header_raw, parent_raw, content_raw, buffers = frames[2], frames[3], frames[4], tuple(frames[5:])
        if verify:
            self._verify_signature(frames[2:], signature)

        header = _loads(header_raw, "header")
        for name in ("msg_id", "msg_type", "request_key"):  # attribution, only for well-formed values
            value = header.get(name)
            if isinstance(value, str) and (_TYPE_RE if name == "msg_type" else _ID_RE).fullmatch(value):
                who[name] = value
        _check_version(header.get("version"))
        ignored: list[str] = []
        ctx = _Ctx("malformed", ignored)
        _HEADER.check(header, "header", ctx)
        sent_at = _parse_date(header["date"])
        msg_type, msg_id = header["msg_type"], header["msg_id"]

        if verify and self._key is not None:
            self._check_replay(signature, sent_at)
            self._check_age(sent_at)
        if msg_type not in MESSAGE_TYPES:
            raise ProtocolError("unknown_type", f"unknown msg_type {msg_type!r} (protocol "
                                f"{PROTOCOL_VERSION} knows {', '.join(sorted(MESSAGE_TYPES))})",
                                "header.msg_type")
        if verify and msg_type not in self.accept:
            raise ProtocolError("unexpected_type", f"this peer does not accept {msg_type!r} messages",
                                "header.msg_type")
        is_request = msg_type in REQUEST_TYPES
        if msg_type in _NEEDS_REQUEST_KEY and header.get("request_key") is None:
            raise ProtocolError("invalid_request", f"a {msg_type} request needs header.request_key",
                                "header.request_key")

        try:
            parent = parent_raw.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("malformed", "parent_id must be ASCII", "parent_id") from None
        if parent and not _ID_RE.fullmatch(parent):
            raise ProtocolError("malformed", f"parent_id must match {_ID_RE.pattern}", "parent_id")
        if is_request and parent:
            raise ProtocolError("malformed", "a request has an empty parent_id frame", "parent_id")
        if not is_request and msg_type != "error" and not parent:
            raise ProtocolError("malformed", f"a {msg_type} names its request in parent_id", "parent_id")

        content = _loads(content_raw, "content")
        ctx = _Ctx("invalid_request" if is_request else "malformed", ignored)
        request = _check_content(msg_type, content, buffers, ctx)
        return Message(
            msg_type=msg_type,
            msg_id=msg_id,
            header=header,
            parent_id=parent or None,
            content=content,
            buffers=buffers,
            ignored_fields=tuple(ignored[:MAX_IGNORED_FIELDS]),
            request=request,
        )

    def _verify_signature(self, body: list[bytes], signature: bytes) -> None:
        if self._key is None:
            if signature:
                raise ProtocolError(
                    "bad_signature", "message is signed but this side has no key configured", "signature")
            return
        if not signature:
            raise ProtocolError("bad_signature", "message is not signed; a key is configured", "signature")
        if not hmac.compare_digest(signature, self._sign(body)):
            raise ProtocolError("bad_signature", "signature does not match (wrong key or altered frames)",
                                "signature")

    def _check_replay(self, signature: bytes, sent_at: float) -> None:
        with self._lock:
            if signature in self._seen:
                raise ProtocolError("replayed", "these exact frames were received before", "signature")
            self._seen[signature] = sent_at
            if len(self._seen) > self._history_size:
                self._cull()

    def _cull(self) -> None:
        """Forget expired signatures first (the age check refuses those frames anyway), then, as
        jupyter_client does, a random 10%: which entries go cannot be predicted by a replaying peer."""
        if self.max_age_s is not None:
            horizon = self._clock() - self.max_age_s
            for sig in [s for s, t in self._seen.items() if t < horizon]:
                del self._seen[sig]
        excess = len(self._seen) - self._history_size
        if excess > 0:
            n = max(int(len(self._seen) * 0.1), excess)
            for sig in self._rng.sample(sorted(self._seen), n):
                del self._seen[sig]

    def _check_age(self, sent_at: float) -> None:
        if self.max_age_s is None:
            return
        age = self._clock() - sent_at
        if age > self.max_age_s:
            raise ProtocolError("expired", f"message is {age:.0f} s old; the limit is {self.max_age_s:.0f} s "
                                "(clocks out of sync, or a stale queued message?)", "header.date")
        if -age > MAX_CLOCK_SKEW_S:
            raise ProtocolError("expired", f"message is dated {-age:.0f} s in the future; clocks may differ "
                                f"by at most {MAX_CLOCK_SKEW_S:.0f} s", "header.date")


# --- frames, JSON, dates -------------------------------------------------------------------------------


def _is_magic(frame: object) -> bool:
    try:
        view = memoryview(frame)  # type: ignore[arg-type]
    except TypeError:
        return False
    return view.nbytes == len(MAGIC) and view.tobytes() == MAGIC


def _to_bytes(frame: object, where: str) -> bytes:
    if isinstance(frame, bytes):
        return frame
    try:  # bytearray, memoryview, zmq.Frame (copy=False receives): anything with the buffer protocol
        return memoryview(frame).tobytes()  # type: ignore[arg-type]
    except (TypeError, ValueError, BufferError):
        raise ProtocolError("malformed", f"{where}: every frame must be bytes, got "
                            f"{type(frame).__name__}", where) from None


class _Rejected(ValueError):
    pass


def _reject_constant(name: str) -> NoReturn:
    raise _Rejected(f"{name} is not a JSON number")


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise _Rejected(f"integer literal of {len(text)} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected(f"number {text[:32]} is out of range")
    return value


def _unique_object(pairs: list[tuple[str, object]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
        if key in obj:  # two parsers could disagree on which one wins: refuse instead
            raise _Rejected(f"duplicate key {key[:64]!r}")
        obj[key] = value
    return obj


def _loads(raw: bytes, where: str) -> dict:
    """Strict JSON object from untrusted bytes; anything else is ProtocolError("malformed")."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("malformed", f"{where} is not UTF-8 (byte {exc.start})", where) from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_object, parse_int=_parse_int,
                           parse_float=_parse_float, parse_constant=_reject_constant)
        if "\\u" in text:  # "\ud800" escapes decode to lone surrogates no UTF-8 encoder accepts
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except _Rejected as exc:
        raise ProtocolError("malformed", f"{where}: {exc}", where) from None
    except UnicodeEncodeError:
        raise ProtocolError("malformed", f"{where} contains an unpaired surrogate escape", where) from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("malformed", f"{where} is not valid JSON ({str(exc)[:200]})", where) from None
    if not isinstance(value, dict):
        raise ProtocolError("malformed", f"{where} must be a JSON object, got {_json_type(value)}", where)
    return value


def _dumps(value: object, where: str) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        raise ProtocolError("malformed", f"{where} cannot be sent as JSON ({str(exc)[:200]})",
                            where) from None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _format_date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_date(text: str) -> float:
    match = _DATE_RE.fullmatch(text)
    if match is None:
        raise ProtocolError("malformed", "header.date must be ISO 8601 with a zone, e.g. "
                            "2025-01-31T12:00:00.000000Z", "header.date")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        tz = timezone.utc
        if zone != "Z":
            sign = -1 if zone[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        micro = int((frac or "0").ljust(6, "0")[:6])
        when = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz)
        return when.timestamp()
    except (ValueError, OverflowError):
        raise ProtocolError("malformed", f"header.date {text!r} is not a valid date", "header.date") from None


def _check_version(version: object) -> None:
    match = _VERSION_RE.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise ProtocolError("malformed", "header.version must be \"MAJOR.MINOR\"", "header.version")
    if int(match.group(1)) != _MAJOR:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version} is not supported: this peer speaks {PROTOCOL_VERSION} "
            f"and accepts {_MAJOR}.x", "header.version")


# --- content schemas -----------------------------------------------------------------------------------


@dataclass
class _Ctx:
    """Validation state: the error code to use and the unknown fields met so far."""

    code: str
    ignored: list[str]

    def fail(self, path: str, message: str) -> NoReturn:
        raise ProtocolError(self.code, f"{path or 'content'} {message}", path or "content")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Spec:
    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class _Str(_Spec):
    min_len: int
    max_len: int
    pattern: re.Pattern[str] | None = None

    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        if not isinstance(value, str):
            ctx.fail(path, f"must be a string, got {_json_type(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            ctx.fail(path, f"must be {self.min_len} to {self.max_len} characters, got {len(value)}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            ctx.fail(path, f"must match {self.pattern.pattern}")


@dataclass(frozen=True)
class _Int(_Spec):
    lo: int
    hi: int

    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(path, f"must be an integer, got {_json_type(value)}")
        if not self.lo <= value <= self.hi:
            ctx.fail(path, f"must be between {self.lo} and {self.hi}, got {value}")


@dataclass(frozen=True)
class _Num(_Spec):
    lo: float
    hi: float

    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.fail(path, f"must be a number, got {_json_type(value)}")
        if not self.lo <= value <= self.hi:
            ctx.fail(path, f"must be between {self.lo} and {self.hi}, got {value}")


class _Bool(_Spec):
    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        if not isinstance(value, bool):
            ctx.fail(path, f"must be true or false, got {_json_type(value)}")


@dataclass(frozen=True)
class _Null(_Spec):
    inner: _Spec

    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        if value is not None:
            self.inner.check(value, path, ctx)


@dataclass(frozen=True)
class _List(_Spec):
    item: _Spec
    max_items: int
    min_items: int = 0

    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        if not isinstance(value, list):
            ctx.fail(path, f"must be an array, got {_json_type(value)}")
        if not self.min_items <= len(value) <= self.max_items:
            ctx.fail(path, f"must have {self.min_items} to {self.max_items} items, got {len(value)}")
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]", ctx)


@dataclass(frozen=True)
class _Free(_Spec):
    """A JSON object passed through as sent (e.g. provenance metadata): bounded, not interpreted."""

    max_items: int

    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {_json_type(value)}")
        if len(value) > self.max_items:
            ctx.fail(path, f"must have at most {self.max_items} entries, got {len(value)}")


@dataclass(frozen=True)
class _Map(_Free):
    """An object with free keys (e.g. timings): keys are short identifiers, values all one type."""

    value: _Spec

    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        super().check(value, path, ctx)
        for key, item in value.items():
            if not _IDENT_RE.fullmatch(key):
                ctx.fail(path, f"keys must match {_IDENT_RE.pattern}, got {key[:64]!r}")
            self.value.check(item, _join(path, key), ctx)


@dataclass(frozen=True)
class _Obj(_Spec):
    """A JSON object with known fields; unknown ones are recorded in ctx.ignored (newer MINOR versions)."""

    required: dict
    optional: dict

    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {_json_type(value)}")
        for key, spec in self.required.items():
            if key not in value:
                ctx.fail(_join(path, key), "is required")
            spec.check(value[key], _join(path, key), ctx)
        for key, item in value.items():
            if key in self.optional:
                self.optional[key].check(item, _join(path, key), ctx)
            elif key not in self.required:
                ctx.ignored.append(_join(path, key[:64]))


class _Generate(_Spec):
    """A GenerateRequest as JSON: request.py stays the single place that knows its fields and limits. Here (a
    result's effective request) input images are records (sha256, mime, size), not buffers."""

    def check(self, value: object, path: str, ctx: _Ctx) -> None:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {_json_type(value)}")
        _generate_request(value, path, ctx, _record_images(value, path, ctx))


def _image_refs(data: dict) -> list[tuple[str, object]]:
    """(field, value) of every input-image field present: init, mask, depth, controls[i].image."""
    refs = [(name, data[name]) for name in IMAGE_FIELDS if data.get(name) is not None]
    controls = data.get("controls")
    if isinstance(controls, list):
        refs += [(f"controls[{i}].image", item["image"]) for i, item in enumerate(controls[:MAX_CONTROLS + 1])
                 if isinstance(item, dict) and item.get("image") is not None]
    return refs


def _record_images(data: dict, path: str, ctx: _Ctx) -> dict[str, InputImage]:
    images = {}
    for name, value in _image_refs(data):
        try:
            images[name] = InputImage.from_record(value, _join(path, name))
        except InvalidRequest as exc:
            raise ProtocolError(ctx.code, exc.message, exc.field) from None
    return images


def _generate_request(data: dict, path: str, ctx: _Ctx, images: dict[str, InputImage]) -> GenerateRequest:
    try:
        request, unknown = GenerateRequest.from_dict(data, images)
    except InvalidRequest as exc:
        field = _join(path, exc.field) if exc.field else (path or "content")
        raise ProtocolError(ctx.code, exc.message, field) from None
    except (TypeError, ValueError, OverflowError) as exc:  # defensive: request.py should raise only the above
        raise ProtocolError(ctx.code, f"invalid request ({exc})", path or "content") from None
    ctx.ignored.extend(_join(path, k[:64]) for k in unknown)
    return request


def _input_images(body: dict, descriptors: list[dict], buffers: tuple[bytes, ...], ctx: _Ctx) -> dict[str, InputImage]:
    """A generate's input images (1.2): each image field names one buffer of role ``input`` as
    ``{"buffer": index}``; each such buffer is named exactly once, and its declared mime and size must be
    what its header says. Checked from the header alone: nothing is decoded here."""
    named: dict[int, str] = {}
    for field, value in _image_refs(body):
        index = value.get("buffer") if isinstance(value, dict) and len(value) == 1 else None
        if isinstance(index, bool) or not isinstance(index, int):
            ctx.fail(field, 'must name its image buffer as {"buffer": index} (protocol 1.2)')
        if not 0 <= index < len(descriptors) or descriptors[index]["role"] != INPUT_ROLE:
            ctx.fail(field, f"names buffer {index}, which is not a buffer of role {INPUT_ROLE}")
        if index in named:
            ctx.fail(field, f"names buffer {index}, which {named[index]} names too")
        named[index] = field
    for i, desc in enumerate(descriptors):
        if desc["role"] == INPUT_ROLE and i not in named:
            ctx.fail(f"buffers[{i}]", "is an input image that no field of the request names")
    return {field: _input_image(buffers[i], descriptors[i], i, field, ctx) for i, field in named.items()}


def _input_image(data: bytes, desc: dict, index: int, field: str, ctx: _Ctx) -> InputImage:
    try:
        image = InputImage.from_bytes(data, field)
    except InvalidRequest as exc:
        raise ProtocolError(ctx.code, f"{exc.message} (buffers[{index}])", field) from None
    if desc["mime"] != image.mime:
        ctx.fail(field, f"is declared {desc['mime']} (buffers[{index}].mime) but its data is {image.mime}")
    declared = (desc.get("width"), desc.get("height"))
    if None in declared:
        ctx.fail(f"buffers[{index}]", "is an input image: width and height are required")
    if declared != (image.width, image.height):
        ctx.fail(field, f"is declared {declared[0]} x {declared[1]} (buffers[{index}]) but its header says "
                 f"{image.width} x {image.height}")
    return image


def generate_content(fields: dict) -> tuple[dict, list[bytes]]:
    """The content and buffers of a generate, from request fields as GenerateRequest takes them: InputImage
    values (init, mask, depth) and ControlInput items (controls) become ``{"buffer": i}`` references to
    buffers of role ``input``; every other field is sent as is (unknown ones too: the server reports them)."""
    content: dict = {}
    buffers: list[bytes] = []
    descriptors: list[dict] = []

    def attach(image: object, field: str) -> dict:
        if not isinstance(image, InputImage) or image.data is None:
            raise ProtocolError("invalid_request", f"{field} must be an image with its bytes (InputImage)", field)
        descriptors.append({"index": len(buffers), "mime": image.mime, "role": INPUT_ROLE,
                            "width": image.width, "height": image.height})
        buffers.append(image.data)
        return {"buffer": len(buffers) - 1}

    for key, value in fields.items():
        if key in IMAGE_FIELDS and value is not None:
            content[key] = attach(value, key)
        elif key == "controls" and value:
            if not all(isinstance(c, ControlInput) for c in value):
                raise ProtocolError("invalid_request", "controls must be ControlInput items", "controls")
            content[key] = [{"name": c.name, "image": attach(c.image, f"controls[{i}].image"), "scale": c.scale,
                             "start": c.start, "end": c.end} for i, c in enumerate(value)]
        elif key != "controls":
            content[key] = value
    if buffers:
        content["buffers"] = descriptors
    return content, buffers


_ID = _Str(1, MAX_ID_CHARS, _ID_RE)
_IDENT = _Str(1, 32, _IDENT_RE)
_NAME = _Str(1, 256)
_HASH = _Str(1, 256)
_PROVIDER = _Str(1, 128)
_SECONDS = _Num(0.0, 1e9)
_COUNT = _Int(0, 10**9)
_BYTES = _Int(0, 2**53 - 1)
_TEXT = _Str(0, MAX_PROMPT_CHARS)
_IGNORED = {"ignored_fields": _List(_Str(0, 256), MAX_IGNORED_FIELDS)}

_HEADER = _Obj(
    required={"msg_id": _ID, "msg_type": _Str(1, 64, _TYPE_RE), "version": _Str(3, 9),
              "session": _ID, "date": _Str(20, 64)},
    optional={"request_key": _Null(_ID)},
)

_BUFFER = _Obj(
    required={"index": _Int(0, MAX_BUFFERS - 1), "mime": _Str(3, 129, _MIME_RE), "role": _IDENT},
    optional={"width": _Int(1, 2**31 - 1), "height": _Int(1, 2**31 - 1)},
)
_BUFFERS = _List(_BUFFER, MAX_BUFFERS)

_OUTPUT = _Obj(
    required={"buffer": _Int(0, MAX_BUFFERS - 1), "role": _IDENT, "suffix": _Str(1, 64, _SUFFIX_RE)},
    optional={"colour_space": _Null(_IDENT)},
)
_IMAGE = _Obj(
    required={"buffer": _Int(0, MAX_BUFFERS - 1), "seed": _Int(0, MAX_SEED), "model_id": _NAME,
              "model_hash": _HASH, "provider": _PROVIDER},
    optional={"timings": _Map(32, _SECONDS), "metadata": _Free(256), "outputs": _List(_OUTPUT, 32)},
)
_MODEL_REF = _Obj(required={"id": _NAME, "hash": _HASH}, optional={"name": _NAME, "loaded": _Bool()})
_MODEL_INFO = _Obj(
    required={"id": _NAME, "hash": _HASH},
    optional={"name": _NAME, "kinds": _List(_IDENT, 16), "width": _Int(1, MAX_SIDE),
              "height": _Int(1, MAX_SIDE), "steps": _Int(1, MAX_STEPS), "schedulers": _List(_IDENT, 32),
              "loaded": _Bool(),
              # since 1.2: what a request may ask of this model, so a client need not learn it from errors
              "size_multiple": _Int(1, MAX_SIDE), "max_side": _Int(1, MAX_SIDE), "tile_modes": _List(_IDENT, 8),
              "accepts": _List(_IDENT, 16), "controlnets": _List(_Str(1, 64), 64),
              "family": _IDENT, "guidance": _IDENT, "max_tokens": _Map(8, _Int(1, 4096))},
)
_RUNNING = _Obj(
    required={"msg_id": _ID},
    optional={"request_key": _Null(_ID), "step": _COUNT, "total": _COUNT, "image": _COUNT,
              "elapsed_s": _SECONDS},
)

_CONTENT: dict[str, _Spec] = {
    "generate": _Generate(),
    "cancel": _Obj({}, {"target_msg_id": _ID, "target_request_key": _ID}),
    "status": _Obj({}, {}),
    "list_models": _Obj({}, {}),
    "shutdown": _Obj({}, {"drain": _Bool(), "reason": _Str(0, 256)}),
    "ping": _Obj({}, {}),
    "progress": _Obj(
        required={"step": _Int(0, 10**6), "total": _Int(1, 10**6)},
        optional={"image": _Int(0, MAX_COUNT - 1), "count": _Int(1, MAX_COUNT), "stage": _IDENT,
                  "queue_position": _Null(_COUNT), "elapsed_s": _SECONDS},
    ),
    "result": _Obj(
        required={"images": _List(_IMAGE, MAX_COUNT, 1), "request": _Generate(),
                  "composed_prompt": _Obj({"prompt": _TEXT, "negative_prompt": _TEXT},
                                          {"truncated": _Bool()})},
        optional={"warnings": _List(_Str(0, 1024), 32), **_IGNORED},
    ),
    "error": _Obj(
        required={"code": _Str(1, 64, _CODE_RE), "message": _Str(0, MAX_ERROR_MESSAGE_CHARS)},
        optional={"field": _Null(_Str(0, 256)), "retry_after_s": _Null(_SECONDS), "step": _Null(_COUNT),
                  **_IGNORED},
    ),
    "cancel_reply": _Obj(
        required={"cancelled": _Bool(), "state": _IDENT},
        optional={"target_msg_id": _Null(_ID), "target_request_key": _Null(_ID), "step": _Null(_COUNT),
                  **_IGNORED},
    ),
    "status_reply": _Obj(
        required={"session": _ID, "uptime_s": _SECONDS, "model": _Null(_MODEL_REF),
                  "provider": _Null(_PROVIDER),
                  "queue": _Obj({"length": _COUNT, "capacity": _COUNT}, {}), "running": _Null(_RUNNING)},
        optional={"state": _IDENT, "providers": _List(_PROVIDER, 32), "server_version": _Str(1, 64),
                  "memory": _Obj({}, {"rss_bytes": _Null(_BYTES), "device_bytes": _Null(_BYTES),
                                      "device_total_bytes": _Null(_BYTES)}),
                  **_IGNORED},
    ),
    "list_models_reply": _Obj({"models": _List(_MODEL_INFO, 1024)}, {"current": _Null(_NAME), **_IGNORED}),
    "shutdown_reply": _Obj({"accepted": _Bool()}, {"pending": _COUNT, **_IGNORED}),
    "ping_reply": _Obj({}, dict(_IGNORED)),
}


def _check_content(
    msg_type: str, content: dict, buffers: tuple[bytes, ...], ctx: _Ctx
) -> GenerateRequest | None:
    """Schema of ``msg_type`` plus the cross-field rules; returns the GenerateRequest of a generate."""
    body = {k: v for k, v in content.items() if k != "buffers"}
    descriptors = _check_buffers(content.get("buffers"), buffers, ctx)
    request = None
    if msg_type == "generate":
        request = _generate_request(body, "", ctx, _input_images(body, descriptors, buffers, ctx))
    elif msg_type == "project":
        request = _project_request(body, descriptors, buffers, ctx)
    else:
        _CONTENT[msg_type].check(body, "", ctx)
    roles = [d["role"] for d in descriptors]

    if msg_type == "cancel" and ("target_msg_id" in body) == ("target_request_key" in body):
        ctx.fail("target_msg_id", "or target_request_key: give exactly one")
    elif msg_type == "progress":
        if body["step"] > body["total"]:
            ctx.fail("step", f"must not exceed total ({body['total']})")
        previews = [i for i, role in enumerate(roles) if role == "preview"]
        if len(previews) > 1:
            ctx.fail("buffers", "may hold at most one preview")
        for i in previews:
            if len(buffers[i]) > MAX_PREVIEW_BYTES:
                raise ProtocolError("too_large", f"preview is {len(buffers[i])} bytes; the limit is "
                                    f"{MAX_PREVIEW_BYTES}", f"buffers[{i}]")
        ctx.ignored.extend(f"buffers[{i}]" for i, role in enumerate(roles) if role != "preview")
    elif msg_type == "project":
        pass  # _project_request used the array buffers and listed the others as ignored
    elif msg_type == "project_result":
        _check_project_result(body, roles, descriptors, ctx)
    elif msg_type == "result":
        refs = [image["buffer"] for image in body["images"]]
        for i, ref in enumerate(refs):
            if ref >= len(roles) or roles[ref] != "image":
                ctx.fail(f"images[{i}].buffer", f"must name a buffer whose role is image, got {ref}")
            if descriptors[ref]["mime"] not in IMAGE_MIMES:
                ctx.fail(f"buffers[{ref}].mime", f"of an image must be one of {', '.join(IMAGE_MIMES)}")
        if len(set(refs)) != len(refs) or len(refs) != roles.count("image"):
            ctx.fail("images", "must name each image buffer exactly once")
        used = set(refs)
        for i, image in enumerate(body["images"]):
            for j, output in enumerate(image.get("outputs", ())):
                ref = output["buffer"]
                if ref >= len(roles) or roles[ref] != output["role"] or output["role"] == "image" or ref in used:
                    ctx.fail(f"images[{i}].outputs[{j}].buffer",
                             f"must name an unused buffer whose role is {output['role']}, got {ref}")
                used.add(ref)
        ctx.ignored.extend(f"buffers[{i}]" for i in range(len(roles)) if i not in used)
    elif msg_type == "generate":
        ctx.ignored.extend(f"buffers[{i}]" for i, role in enumerate(roles) if role != INPUT_ROLE)
    else:
        ctx.ignored.extend(f"buffers[{i}]" for i in range(len(buffers)))
    return request


def _check_buffers(value: object, buffers: tuple[bytes, ...], ctx: _Ctx) -> list[dict]:
    """The content's ``buffers`` list must describe the buffer frames one to one, in order."""
    if value is None and not buffers:
        return []
    _BUFFERS.check(value, "buffers", ctx)
    assert isinstance(value, list)
    if len(value) != len(buffers):
        ctx.fail("buffers", f"describes {len(value)} buffers but {len(buffers)} buffer frames came")
    for i, (desc, data) in enumerate(zip(value, buffers)):
        if desc["index"] != i:
            ctx.fail(f"buffers[{i}].index", f"must be {i}, got {desc['index']}")
        magic = _MAGIC_BYTES.get(desc["mime"])
        if magic is not None and desc["role"] != INPUT_ROLE and not data.startswith(magic):
            ctx.fail(f"buffers[{i}]", f"is not {desc['mime']} data (bad file signature)")
    return value


# --- project: texture meshes from their shape (docs/protocol.md, "project") ---------------------------------
# A project request carries its mesh arrays as buffers of role "array" (raw little-endian bytes); each mesh
# names its positions, triangles and uvs as {"buffer": index, "dtype": ..., "shape": [...]}. The request's
# fields and limits live in project_request.py; the geometry checks run in the sidecar before it queues.

ARRAY_ROLE = "array"
ARRAY_MIME = "application/octet-stream"
TEXTURE_ROLE = "texture"

_VIEW_REPORT = _Obj(
    required={"name": _Str(0, 256), "generated": _Bool(), "repainted": _COUNT, "coverage": _Num(0.0, 1.0)},
    optional={"generate_s": _SECONDS, "bake_s": _SECONDS},
)
_TEXTURE = _Obj(
    required={"mesh": _NAME, "buffer": _Int(0, MAX_BUFFERS - 1), "coverage": _Num(0.0, 1.0)},
    optional={"width": _Int(1, 4096), "height": _Int(1, 4096)},
)
_CONTENT["project_result"] = _Obj(
    required={"textures": _List(_TEXTURE, MAX_MESHES, 1), "views": _List(_VIEW_REPORT, MAX_CAMERAS),
              "mode": _IDENT},
    optional={"mode_text": _Str(0, 1024), "warnings": _List(_Str(0, MAX_ERROR_MESSAGE_CHARS), 256),
              "timings": _Map(32, _SECONDS), "model_id": _NAME, "model_hash": _HASH, **_IGNORED},
)


def _project_request(body: dict, descriptors: list[dict], buffers: tuple[bytes, ...], ctx: _Ctx) -> ProjectRequest:
    arrays = {}
    for i, desc in enumerate(descriptors):
        if desc["role"] != ARRAY_ROLE:
            ctx.ignored.append(f"buffers[{i}]")
            continue
        if desc["mime"] != ARRAY_MIME:
            ctx.fail(f"buffers[{i}].mime", f"of an array must be {ARRAY_MIME}")
        if len(buffers[i]) > MAX_ARRAY_BYTES:
            raise ProtocolError("too_large", f"array buffer {i} is {len(buffers[i]):,} bytes; the limit is "
                                f"{MAX_ARRAY_BYTES:,}", f"buffers[{i}]")
        arrays[i] = buffers[i]
    try:
        request, unknown = ProjectRequest.from_dict(body, arrays)
    except InvalidRequest as exc:
        raise ProtocolError(ctx.code, exc.message, exc.field or "content") from None
    ctx.ignored.extend(unknown)
    return request


def _check_project_result(body: dict, roles: list[str], descriptors: list[dict], ctx: _Ctx) -> None:
    refs = [t["buffer"] for t in body["textures"]]
    for i, ref in enumerate(refs):
        if ref >= len(roles) or roles[ref] != TEXTURE_ROLE or descriptors[ref]["mime"] != "image/png":
            ctx.fail(f"textures[{i}].buffer", f"must name a PNG buffer whose role is texture, got {ref}")
    if len(set(refs)) != len(refs):
        ctx.fail("textures", "must name each texture buffer once")
    ctx.ignored.extend(f"buffers[{i}]" for i in range(len(roles)) if i not in set(refs))


def project_content(request: ProjectRequest) -> tuple[dict, list[bytes]]:
    """A project request's content (with its buffer descriptors) and its array buffers, ready to encode."""
    content, buffers = request.to_wire()
    content["buffers"] = [{"index": i, "mime": ARRAY_MIME, "role": ARRAY_ROLE} for i in range(len(buffers))]
    return content, buffers
