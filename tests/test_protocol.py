"""The wire codec (aigc_bridge/protocol.py) against docs/protocol.md: round trips, signing, replay,
versioning, validation, and a seeded fuzz that may only ever produce a Message or a ProtocolError."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from aigc_bridge import protocol
from aigc_bridge.errors import AigcError, Cancelled
from aigc_bridge.project_request import ArrayInput, MeshInput, ProjectRequest
from aigc_bridge.protocol import (
    ERROR_CODES,
    MAGIC,
    MAX_CONTENT_BYTES,
    MAX_FRAMES,
    MAX_HEADER_BYTES,
    MAX_PREVIEW_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    REQUEST_TYPES,
    Codec,
    Message,
    ProtocolError,
    error_content,
    project_content,
    split_routing,
    with_routing,
)
from aigc_bridge.request import GenerateRequest

KEY = b"test-key-0123456789"
DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
EXR = b"\x76\x2f\x31\x01" + random.Random(7).randbytes(5000)
EFFECTIVE = GenerateRequest(prompt="mossy stone", width=512, height=512, steps=20, guidance=7.0, seed=7,
                            scheduler="euler", count=2).to_dict()

# One valid (content, buffers) per message type.
SAMPLES: dict[str, tuple[dict, list[bytes]]] = {
    "generate": ({"prompt": "mossy stone", "steps": 20, "seed": 7, "count": 2, "tile": "both"}, []),
    "cancel": ({"target_request_key": "rk-1"}, []),
    "status": ({}, []),
    "list_models": ({}, []),
    "shutdown": ({"drain": False, "reason": "test"}, []),
    "ping": ({}, []),
    "progress": (
        {"step": 3, "total": 20, "image": 1, "count": 2, "stage": "denoising", "elapsed_s": 0.5,
         "buffers": [{"index": 0, "mime": "image/png", "role": "preview", "width": 64, "height": 64}]},
        [PNG],
    ),
    "result": (
        {"images": [
            {"buffer": 0, "seed": 7, "model_id": "texture-mini", "model_hash": "sha256:ab12",
             "provider": "CPUExecutionProvider", "timings": {"denoise_s": 1.25, "decode_s": 0.5}},
            {"buffer": 1, "seed": 8, "model_id": "texture-mini", "model_hash": "sha256:ab12",
             "provider": "CPUExecutionProvider"}],
         "request": EFFECTIVE,
         "composed_prompt": {"prompt": "mossy stone, seamless", "negative_prompt": "", "truncated": False},
         "ignored_fields": ["pbr_maps"],
         "buffers": [{"index": 0, "mime": "image/png", "role": "image", "width": 512, "height": 512},
                     {"index": 1, "mime": "image/x-exr", "role": "image", "width": 512, "height": 512}]},
        [PNG, EXR],
    ),
    "error": ({"code": "busy", "message": "queue full", "field": None, "retry_after_s": 2.0}, []),
    "cancel_reply": ({"cancelled": True, "state": "running", "target_request_key": "rk-1"}, []),
    "status_reply": (
        {"session": "srv-1", "uptime_s": 12.5, "model": {"id": "texture-mini", "hash": "sha256:ab12",
                                                         "loaded": True},
         "provider": "CPUExecutionProvider", "queue": {"length": 1, "capacity": 8},
         "running": {"msg_id": "m-1", "request_key": "rk-1", "step": 3, "total": 20},
         "state": "busy", "providers": ["CPUExecutionProvider"], "server_version": "0.1.0",
         "memory": {"rss_bytes": 123456789, "device_bytes": None}},
        [],
    ),
    "list_models_reply": (
        {"models": [{"id": "texture-mini", "hash": "sha256:ab12", "name": "Texture mini",
                     "kinds": ["texture"], "width": 512, "height": 512, "steps": 20,
                     "schedulers": ["euler", "ddim"], "loaded": True}],
         "current": "texture-mini"},
        [],
    ),
    "shutdown_reply": ({"accepted": True, "pending": 0}, []),
    "ping_reply": ({}, []),
}
# project: a one-triangle mesh as array buffers (docs/protocol.md, "project"), and its result
SAMPLES["project"] = project_content(ProjectRequest("brick", (MeshInput(
    "tri", ArrayInput("float32", (3, 3), bytes(36)), ArrayInput("int32", (1, 3), bytes(12)),
    ArrayInput("float32", (1, 3, 2), bytes(24))),)))
SAMPLES["project_result"] = (
    {"textures": [{"mesh": "tri", "buffer": 0, "coverage": 0.99, "width": 64, "height": 64}],
     "views": [{"name": "ring 1 (+0 deg)", "generated": True, "repainted": 10, "coverage": 0.5}],
     "mode": "text", "mode_text": "text alone", "warnings": [],
     "buffers": [{"index": 0, "mime": "image/png", "role": "texture", "width": 64, "height": 64}]},
    [PNG],
)


def sign(key: bytes | None, body: list[bytes]) -> bytes:
    """The signature as docs/protocol.md section 4 defines it, written independently of the codec."""
    if not key:
        return b""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in body:
        mac.update(len(frame).to_bytes(8, "big") + frame)
    return mac.hexdigest().encode()


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def forge(*, key: bytes | None = None, header: dict | None = None, content: object = None,
          parent: bytes = b"", buffers: tuple[bytes, ...] = (), header_raw: bytes | None = None,
          content_raw: bytes | None = None) -> list[bytes]:
    """Frames built by hand (not by the codec), signed correctly, to reach the checks after the HMAC."""
    head = {"msg_id": "m-forged", "msg_type": "generate", "version": PROTOCOL_VERSION, "session": "s-1",
            "date": now_iso(), "request_key": "rk-1"}
    head.update(header or {})
    head = {k: v for k, v in head.items() if v is not ...}
    body = [
        header_raw if header_raw is not None else json.dumps(head).encode(),
        parent,
        content_raw if content_raw is not None else json.dumps(
            {"prompt": "x"} if content is None else content).encode(),
        *buffers,
    ]
    return [MAGIC, sign(key, body), *body]


def encode_sample(codec: Codec, msg_type: str, **kw) -> list[bytes]:
    content, buffers = SAMPLES[msg_type]
    if msg_type in REQUEST_TYPES:
        return codec.encode(msg_type, content, buffers=buffers, request_key="rk-1", **kw)
    return codec.encode(msg_type, content, buffers=buffers, parent_id="m-1", request_key="rk-1", **kw)


def refused(codec: Codec, frames: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frames)  # type: ignore[arg-type]
    return info.value


# --- round trips -------------------------------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert set(SAMPLES) == MESSAGE_TYPES == REQUEST_TYPES | REPLY_TYPES


@pytest.mark.parametrize("key", [None, KEY], ids=["no-key", "key"])
@pytest.mark.parametrize("msg_type", sorted(SAMPLES))
def test_round_trip(msg_type: str, key: bytes | None) -> None:
    sender, receiver = Codec(key, session="sender-1"), Codec(key)
    frames = encode_sample(sender, msg_type)
    assert frames[0] == MAGIC and all(isinstance(f, bytes) for f in frames)
    assert (len(frames[1]) == 64) == (key is not None)
    msg = receiver.decode(frames)
    content, buffers = SAMPLES[msg_type]
    assert isinstance(msg, Message)
    assert (msg.msg_type, msg.content, msg.buffers) == (msg_type, content, tuple(buffers))
    assert msg.parent_id == (None if msg_type in REQUEST_TYPES else "m-1")
    assert (msg.request_key, msg.session, msg.version) == ("rk-1", "sender-1", PROTOCOL_VERSION)
    assert msg.is_request == (msg_type in REQUEST_TYPES)
    assert msg.ignored_fields == ()
    assert json.loads(frames[2])["msg_id"] == msg.msg_id
    if msg_type == "generate":
        assert msg.request == GenerateRequest(prompt="mossy stone", steps=20, seed=7, count=2, tile="both")
    elif msg_type == "project":
        assert isinstance(msg.request, ProjectRequest) and msg.request.meshes[0].triangles.data == bytes(12)
    else:
        assert msg.request is None


def test_buffers_are_byte_exact_and_any_buffer_type_is_accepted() -> None:
    rng = random.Random(3)
    big_png = b"\x89PNG\r\n\x1a\n" + rng.randbytes(3 * 1024 * 1024)
    exr = b"\x76\x2f\x31\x01" + bytes(range(256)) * 100 + b"\x00" * 17
    content = dict(SAMPLES["result"][0])
    codec = Codec(KEY)
    frames = codec.encode("result", content, parent_id="m-1", buffers=[bytearray(big_png), memoryview(exr)])
    msg = Codec(KEY).decode(frames)
    assert msg.buffers == (big_png, exr)
    assert hashlib.sha256(msg.buffers[0]).digest() == hashlib.sha256(big_png).digest()
    assert "3145736" in repr(msg) and "\\x89PNG" not in repr(msg)  # repr summarizes, never dumps


def test_reply_copies_parent_and_request_key() -> None:
    client, server = Codec(KEY, accept=REPLY_TYPES), Codec(KEY, accept=REQUEST_TYPES)
    request = server.decode(client.encode("generate", {"prompt": "sand"}, request_key="rk-9", msg_id="m-9"))
    content, buffers = SAMPLES["progress"]
    event = client.decode(server.reply(request, "progress", content, buffers))
    assert (event.parent_id, event.request_key, event.msg_type) == ("m-9", "rk-9", "progress")


def test_msg_ids_are_unique() -> None:
    codec = Codec(None)
    ids = {json.loads(codec.encode("ping", {})[2])["msg_id"] for _ in range(2000)}
    assert len(ids) == 2000


# --- signing and replay ------------------------------------------------------------------------------


def test_unsigned_and_wrongly_signed_messages_are_refused_when_a_key_is_set() -> None:
    frames = encode_sample(Codec(None), "generate")
    err = refused(Codec(KEY), frames)
    assert (err.code, err.field) == ("bad_signature", "signature")
    assert err.msg_id is None  # nothing unauthenticated is attributed

    frames = encode_sample(Codec(b"other-key"), "generate")
    assert refused(Codec(KEY), frames).code == "bad_signature"

    frames = encode_sample(Codec(KEY), "generate")
    assert refused(Codec(KEY), [*frames[:1], b"", *frames[2:]]).code == "bad_signature"
    assert refused(Codec(KEY), [*frames[:1], b"zz" * 32, *frames[2:]]).code == "bad_signature"
    tampered = [*frames[:4], frames[4].replace(b"mossy", b"mossx")]
    assert refused(Codec(KEY), tampered).code == "bad_signature"


def test_signed_message_to_a_keyless_peer_is_refused() -> None:
    err = refused(Codec(None), encode_sample(Codec(KEY), "ping"))
    assert err.code == "bad_signature" and "no key" in err.message


def test_buffers_are_signed_and_frame_boundaries_cannot_shift() -> None:
    content = {"step": 1, "total": 2, "buffers": [
        {"index": 0, "mime": "application/octet-stream", "role": "blob_a"},
        {"index": 1, "mime": "application/octet-stream", "role": "blob_b"}]}
    frames = Codec(KEY).encode("progress", content, parent_id="m-1", buffers=[b"abcd", b"efgh"])
    flipped = [*frames[:5], b"abcX", frames[6]]
    assert refused(Codec(KEY), flipped).code == "bad_signature"
    shifted = [*frames[:5], b"abc", b"defgh"]  # same concatenation, other boundaries
    assert refused(Codec(KEY), shifted).code == "bad_signature"


def test_signature_matches_the_documented_algorithm() -> None:
    frames = encode_sample(Codec(KEY), "result")
    assert frames[1] == sign(KEY, frames[2:])


def test_replay_of_the_same_frames_is_refused() -> None:
    frames = encode_sample(Codec(KEY), "generate")
    server = Codec(KEY)
    msg = server.decode(frames)
    err = refused(server, list(frames))
    assert (err.code, err.field) == ("replayed", "signature")
    assert (err.msg_id, err.request_key) == (msg.msg_id, "rk-1")  # the server may answer it


def test_a_retry_with_a_new_msg_id_and_the_same_request_key_is_accepted() -> None:
    client, server = Codec(KEY), Codec(KEY)
    content = SAMPLES["generate"][0]
    first = server.decode(client.encode("generate", content, request_key="rk-retry"))
    second = server.decode(client.encode("generate", content, request_key="rk-retry"))
    assert first.msg_id != second.msg_id
    assert first.request_key == second.request_key == "rk-retry"
    assert first.request == second.request


def test_replay_history_is_bounded() -> None:
    client, server = Codec(KEY), Codec(KEY, history_size=50)
    for _ in range(130):
        server.decode(client.encode("ping", {}))
        assert len(server._seen) <= 50


def test_age_window_with_a_key_only() -> None:
    t0 = 1_800_000_000.0
    old = Codec(KEY, clock=lambda: t0 - 301).encode("ping", {})
    future = Codec(KEY, clock=lambda: t0 + 61).encode("ping", {})
    fresh = Codec(KEY, clock=lambda: t0 - 299).encode("ping", {})
    server = Codec(KEY, clock=lambda: t0)
    assert refused(server, old).code == "expired"
    err = refused(server, future)
    assert (err.code, err.field) == ("expired", "header.date") and "future" in err.message
    server.decode(fresh)
    assert Codec(KEY, clock=lambda: t0, max_age_s=None).decode(old).msg_type == "ping"
    unsigned_old = Codec(None, clock=lambda: t0 - 10_000).encode("ping", {})
    assert Codec(None, clock=lambda: t0).decode(unsigned_old).msg_type == "ping"


# --- versioning --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.0", "0.9", "17.3"])
def test_unknown_major_version_is_refused_clearly(version: str) -> None:
    frames = forge(key=KEY, header={"version": version, "msg_id": "m-v2"}, content_raw=b"not even json")
    err = refused(Codec(KEY), frames)
    assert (err.code, err.field) == ("unsupported_version", "header.version")
    assert version in err.message and PROTOCOL_VERSION in err.message and "1.x" in err.message
    assert (err.msg_id, err.msg_type) == ("m-v2", "generate")


@pytest.mark.parametrize("version", ["1", "1.0.0", "v1.0", 1.0, None, ...])
def test_unreadable_version_is_malformed(version: object) -> None:
    err = refused(Codec(None), forge(header={"version": version}))
    assert (err.code, err.field) == ("malformed", "header.version")


def test_newer_minor_version_fields_are_ignored_and_reported() -> None:
    frames = forge(key=KEY, header={"version": "1.7", "priority": 3},
                   content={"prompt": "bark", "pbr_maps": {"normal": True}, "lighting_rig": [2048, 2048]})
    server = Codec(KEY, accept=REQUEST_TYPES)
    msg = server.decode(frames)
    assert msg.version == "1.7"
    assert msg.request == GenerateRequest(prompt="bark")
    assert msg.ignored_fields == ("header.priority", "lighting_rig", "pbr_maps")
    # ...and they travel back to the client in the final reply
    content = dict(SAMPLES["result"][0], ignored_fields=list(msg.ignored_fields))
    reply = Codec(KEY).decode(server.reply(msg, "result", content, SAMPLES["result"][1]))
    assert reply.content["ignored_fields"] == ["header.priority", "lighting_rig", "pbr_maps"]


def test_unknown_nested_reply_fields_and_buffer_roles_are_reported() -> None:
    content = dict(SAMPLES["status_reply"][0])
    content["model"] = dict(content["model"], quantization="int8")
    content["gpu_temp_c"] = 71
    msg = Codec(None).decode(Codec(None).encode("status_reply", content, parent_id="m-1"))
    assert msg.ignored_fields == ("model.quantization", "gpu_temp_c")

    content = dict(SAMPLES["result"][0])
    content["buffers"] = [*content["buffers"], {"index": 2, "mime": "image/png", "role": "normal"}]
    msg = Codec(None).decode(Codec(None).encode("result", content, parent_id="m-1", buffers=[PNG, EXR, PNG]))
    assert msg.ignored_fields == ("buffers[2]",)


# --- message rules -----------------------------------------------------------------------------------


def test_invalid_generate_content_is_attributed_to_the_request() -> None:
    frames = forge(key=KEY, header={"msg_id": "m-bad"}, content={"prompt": "x", "steps": 0})
    server = Codec(KEY)
    err = refused(server, frames)
    assert (err.code, err.field) == ("invalid_request", "steps")
    assert (err.msg_id, err.msg_type, err.request_key) == ("m-bad", "generate", "rk-1")
    reply = Codec(KEY).decode(server.encode_error(err))
    assert (reply.msg_type, reply.parent_id, reply.request_key) == ("error", "m-bad", "rk-1")
    assert reply.content == {"code": "invalid_request", "message": err.message, "field": "steps"}


@pytest.mark.parametrize(
    ("msg_type", "content", "field"),
    [
        ("generate", {"steps": 20}, "prompt"),
        ("generate", {"prompt": "x", "guidance": 1e308}, "guidance"),
        ("generate", {"prompt": "x", "seed": -1}, "seed"),
        ("generate", {"prompt": "x", "scheduler": ["euler"]}, "scheduler"),
        ("cancel", {}, "target_msg_id"),
        ("cancel", {"target_msg_id": "a", "target_request_key": "b"}, "target_msg_id"),
        ("cancel", {"target_msg_id": "has space"}, "target_msg_id"),
        ("shutdown", {"drain": "yes"}, "drain"),
    ],
)
def test_invalid_request_content(msg_type: str, content: dict, field: str) -> None:
    err = refused(Codec(None), forge(header={"msg_type": msg_type}, content=content))
    assert (err.code, err.field, err.msg_type) == ("invalid_request", field, msg_type)


@pytest.mark.parametrize(
    ("msg_type", "change", "field"),
    [
        ("progress", {"step": 21}, "step"),
        ("progress", {"total": 0}, "total"),
        ("result", {"images": []}, "images"),
        ("result", {"request": {"prompt": "x", "count": 99}}, "request.count"),
        ("result", {"composed_prompt": {"prompt": "x"}}, "composed_prompt.negative_prompt"),
        ("error", {"code": "Not A Code"}, "code"),
        ("status_reply", {"queue": {"length": -1, "capacity": 1}}, "queue.length"),
        ("status_reply", {"uptime_s": True}, "uptime_s"),
        ("list_models_reply", {"models": [{"id": "m"}]}, "models[0].hash"),
        ("cancel_reply", {"cancelled": 1}, "cancelled"),
    ],
)
def test_invalid_reply_content_is_malformed(msg_type: str, change: dict, field: str) -> None:
    content, buffers = SAMPLES[msg_type]
    frames = forge(header={"msg_type": msg_type}, parent=b"m-1", content={**content, **change},
                   buffers=tuple(buffers))
    err = refused(Codec(None), frames)
    assert (err.code, err.field) == ("malformed", field)


def test_request_key_is_required_for_generate() -> None:
    err = refused(Codec(None), forge(header={"request_key": ...}))
    assert (err.code, err.field, err.msg_id) == ("invalid_request", "header.request_key", "m-forged")
    with pytest.raises(ProtocolError, match="request_key"):
        Codec(None).encode("generate", {"prompt": "x"})


def test_parent_id_rules() -> None:
    assert refused(Codec(None), forge(parent=b"m-1")).field == "parent_id"  # request with a parent
    content, buffers = SAMPLES["progress"]
    frames = forge(header={"msg_type": "progress"}, content=content, buffers=tuple(buffers))
    assert refused(Codec(None), frames).field == "parent_id"  # event without one
    assert refused(Codec(None), forge(header={"msg_type": "ping"}, parent=b"\xff")).field == "parent_id"
    error = forge(header={"msg_type": "error"}, content={"code": "x", "message": ""})
    unattributed = Codec(None).decode(error)
    assert unattributed.parent_id is None


def test_unknown_and_unexpected_types() -> None:
    err = refused(Codec(None), forge(header={"msg_type": "img2img", "msg_id": "m-7"}))
    assert (err.code, err.field) == ("unknown_type", "header.msg_type")
    assert (err.msg_id, err.msg_type) == ("m-7", "img2img")
    result = encode_sample(Codec(KEY), "result")
    err = refused(Codec(KEY, accept=REQUEST_TYPES), result)
    assert (err.code, err.msg_type) == ("unexpected_type", "result")
    err = refused(Codec(KEY, accept=REPLY_TYPES), encode_sample(Codec(KEY), "generate"))
    assert err.code == "unexpected_type"


def test_buffer_descriptions_must_match_the_frames() -> None:
    content, buffers = SAMPLES["progress"]
    codec = Codec(None)
    with pytest.raises(ProtocolError, match="describes 1 buffers but 0"):
        codec.encode("progress", content, parent_id="m-1")
    with pytest.raises(ProtocolError, match="bad file signature"):
        codec.encode("progress", content, parent_id="m-1", buffers=[b"GIF89a..."])
    bad_index = {**content, "buffers": [{**content["buffers"][0], "index": 1}]}
    with pytest.raises(ProtocolError, match="index"):
        codec.encode("progress", bad_index, parent_id="m-1", buffers=buffers)
    with pytest.raises(ProtocolError) as info:
        codec.encode("progress", content, parent_id="m-1", buffers=[PNG + bytes(MAX_PREVIEW_BYTES)])
    assert info.value.code == "too_large"
    result = dict(SAMPLES["result"][0], images=SAMPLES["result"][0]["images"][:1])
    with pytest.raises(ProtocolError, match="exactly once"):
        codec.encode("result", result, parent_id="m-1", buffers=SAMPLES["result"][1])


def test_size_limits() -> None:
    codec = Codec(None)
    err = refused(codec, forge(header_raw=b" " * (MAX_HEADER_BYTES + 1)))
    assert (err.code, err.field) == ("too_large", "header")
    err = refused(codec, forge(content_raw=b" " * (MAX_CONTENT_BYTES + 1)))
    assert (err.code, err.field) == ("too_large", "content")
    err = refused(codec, forge() + [b""] * (MAX_FRAMES - 4))
    assert (err.code, err.field) == ("too_large", "frames")
    err = refused(codec, forge(parent=b"p" * 129))
    assert (err.code, err.field) == ("too_large", "parent_id")
    # the largest valid prompts, escaped to 6 bytes a character, still fit...
    worst = {"prompt": "\x01" * 100_000, "negative_prompt": "\x01" * 100_000}
    assert codec.decode(codec.encode("generate", worst, request_key="rk")).request is not None
    # ...and the encoder refuses what the peer would refuse, before anything is sent
    with pytest.raises(ProtocolError) as info:
        codec.encode("generate", {"prompt": "x", "blob": "x" * MAX_CONTENT_BYTES}, request_key="rk")
    assert (info.value.code, info.value.field) == ("too_large", "content")


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe{}", b"{", b"[]", b"null", b"42", b'"x"', b'{"prompt": NaN}', b'{"prompt": 1e999}',
     b'{"prompt": Infinity}', b'{"prompt": "a", "prompt": "b"}', b'{"seed": 123456789012345678901234}',
     b'{"prompt": "\\ud800"}', b"[" * 50_000, b'{"a":' * 50_000, b"\xef\xbb\xbf{}"],
)
def test_strict_json(raw: bytes) -> None:
    err = refused(Codec(None), forge(content_raw=raw))
    assert (err.code, err.field, err.msg_id) == ("malformed", "content", "m-forged")


@pytest.mark.parametrize(
    "frames",
    [None, b"abc", "text", 5, [], [MAGIC] * 4, [MAGIC, b"", b"{}", b"", "not bytes"],
     [b"x", b"", b"{}", b"", b"{}"], {"frames": 1}],
)
def test_not_a_message(frames: object) -> None:
    assert refused(Codec(KEY), frames).code in ("malformed", "too_large")


def test_encode_refuses_what_the_peer_would_refuse() -> None:
    codec = Codec(None)
    for msg_type, content, code in [
        ("generate", {"prompt": float("nan")}, "malformed"),
        ("generate", {"prompt": {1, 2}}, "malformed"),
        ("teleport", {}, "unknown_type"),
        ("ping", [], "malformed"),
    ]:
        with pytest.raises(ProtocolError) as info:
            codec.encode(msg_type, content, request_key="rk")  # type: ignore[arg-type]
        assert info.value.code == code


def test_error_content_fits_the_limits() -> None:
    content = error_content(AigcError("weird code!", "m" * 10_000, "f" * 1000))
    assert content["code"] == "internal" and len(content["message"]) == 4096 and len(content["field"]) == 256
    frames = Codec(None).encode_error(Cancelled(), parent_id="m-1", request_key="rk-1")
    msg = Codec(None).decode(frames)
    assert msg.content == {"code": "cancelled", "message": "the run was cancelled", "field": None}


# --- routing -----------------------------------------------------------------------------------------


def test_split_and_prepend_routing_ids() -> None:
    frames = encode_sample(Codec(KEY), "ping")
    routing, rest = split_routing([b"\x00k\x8bEg", b"broker-hop", *frames])
    assert routing == [b"\x00k\x8bEg", b"broker-hop"] and rest == frames
    assert split_routing(frames) == ([], frames)
    assert with_routing(routing, [b"a"]) == [b"\x00k\x8bEg", b"broker-hop", b"a"]
    err = refused(Codec(KEY), [b"\x00k\x8bEg", *frames])
    assert (err.code, err.field) == ("malformed", "magic")
    with pytest.raises(ProtocolError) as info:
        split_routing([b"id", b"no", b"magic", b"here"])
    assert (info.value.code, info.value.field) == ("malformed", "magic")


def test_over_a_real_router_dealer_pair() -> None:
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    try:
        router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
        for s in (router, dealer):
            s.linger = 0
            s.rcvtimeo = 5000
        router.bind("inproc://aigc-protocol-test")
        dealer.connect("inproc://aigc-protocol-test")
        client, server = Codec(KEY, accept=REPLY_TYPES), Codec(KEY, accept=REQUEST_TYPES)
        dealer.send_multipart(client.encode("generate", {"prompt": "tiles"}, request_key="rk-z"))
        routing, frames = split_routing(router.recv_multipart(copy=False))  # zmq.Frame objects
        request = server.decode(frames)
        content, buffers = SAMPLES["result"]
        router.send_multipart(with_routing(routing, server.reply(request, "result", content, buffers)))
        reply = client.decode(dealer.recv_multipart(copy=False))
        assert (reply.parent_id, reply.request_key, reply.buffers) == (request.msg_id, "rk-z", tuple(buffers))
    finally:
        ctx.destroy(linger=0)


# --- the spec and the code agree --------------------------------------------------------------------


def test_docs_worked_example_matches_the_codec() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = {}
    for name, block in re.findall(r"<!-- example: (\w+) -->\n```text\n(.*?)```", text, re.S):
        lines = [re.fullmatch(r"frame (\d+)  (.*)", line).group(2) for line in block.splitlines()]
        blocks[name] = [b"" if line == "(empty)" else line.encode() for line in lines]
    t0 = datetime(2025, 1, 31, 12, tzinfo=timezone.utc).timestamp()
    client = Codec(b"example-key", session="blender-7c1d", clock=lambda: t0)
    server = Codec(b"example-key", session="sidecar-a9f2", clock=lambda: t0 + 1.5)
    content = {"prompt": "weathered red brick wall, seamless", "steps": 20, "seed": 42, "tile": "both"}
    generate = client.encode("generate", content, request_key="rk-brick-01", msg_id="m-0001")
    assert generate == blocks["generate"]
    request = server.decode(blocks["generate"])
    content = {"step": 5, "total": 20, "image": 0, "count": 1, "stage": "denoising"}
    progress = server.encode("progress", content, parent_id=request.msg_id,
                             request_key=request.request_key, msg_id="s-0001")
    assert progress == blocks["progress"]
    assert client.decode(progress).parent_id == "m-0001"


def test_docs_describe_every_type_and_error_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    for msg_type in MESSAGE_TYPES:
        assert any(f"`{msg_type}`" in h for h in headings), msg_type
    for code in ERROR_CODES:
        assert f"| `{code}` |" in text, code
    for name in protocol.__all__:
        assert hasattr(protocol, name), name


# --- fuzz ----------------------------------------------------------------------------------------------


def _random_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 7, 2**31, 2**53, 2**63, 10**19, 10**25, -(10**30)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e-300, 1e300, 3.0, 1e308])
    if kind in (4, 5, 6):
        alphabet = "ab_. :-\n\"\\\u00e9\u4e2d\U0001f600\x00"
        return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 40, 300])))
    if kind in (7, 8):
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["prompt", "steps", "a", "buffers", "images", "x" * 70]): _random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


_NASTY = [b"", b"{}", b"[]", b"null", b"{", b"\xff", b"\xc3\x28", b'{"a":NaN}', b'{"a":-Infinity}',
          b'{"a":1e400}', b'{"a":' + b"9" * 30 + b"}", b'{"a":1,"a":1}', b'"\\udfff"', b"[" * 3000,
          b'{"msg_id":"m","msg_type":"ping","version":"1.0","session":"s","date":"2025-13-45T99:99:99Z"}',
          b'{"version":"2.0"}', b'{"version":"1.0"}', b"\x00" * 64]
_HEADER_FIELDS = ["msg_id", "msg_type", "version", "session", "date", "request_key", "extra"]
_FUZZ_VALUES = ["", "1.0", "2.0", "1.99", "generate", "result", "ping", "x" * 200, "m 1",
                "9999-12-31T23:59:59Z", "2025-01-01T00:00:00+25:00", "0001-01-01T00:00:00Z",
                0, 1.5, -1, 10**20, True, None, [], {}]


def _mutate(rng: random.Random, frames: list[bytes], key: bytes | None) -> object:
    frames = list(frames)
    op = rng.randrange(12)
    resign = True
    if op == 0:  # random frames
        frames = [rng.randbytes(rng.randrange(40)) for _ in range(rng.randrange(9))]
        if frames and rng.random() < 0.5:
            frames[0] = MAGIC
        resign = False
    elif op == 1:  # truncated, duplicated or reordered frame lists
        choice = rng.randrange(3)
        if choice == 0:
            frames = frames[: rng.randrange(len(frames) + 1)]
        elif choice == 1:
            frames.insert(rng.randrange(len(frames) + 1), rng.choice(frames))
        else:
            rng.shuffle(frames)
    elif op == 2:  # flipped bits anywhere, maybe without re-signing
        i = rng.randrange(len(frames))
        if frames[i]:
            data = bytearray(frames[i])
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            frames[i] = bytes(data)
        resign = rng.random() < 0.5
    elif op == 3:  # header or content replaced by random JSON of any type
        frames[rng.choice([2, 4])] = json.dumps(_random_json(rng)).encode()
    elif op == 4:  # one header field set to a wrong or odd value
        header = json.loads(frames[2])
        field = rng.choice(_HEADER_FIELDS)
        if rng.random() < 0.2:
            header.pop(field, None)
        else:
            header[field] = rng.choice(_FUZZ_VALUES) if rng.random() < 0.7 else _random_json(rng)
        frames[2] = json.dumps(header).encode()
    elif op == 5:  # one content field (known or not) set to random JSON
        content = json.loads(frames[4])
        names = [*content, "prompt", "steps", "buffers", "images", "target_msg_id", "step", "unknown"]
        field = rng.choice(names)
        target = content
        if isinstance(content.get(field), list) and content[field] and isinstance(content[field][0], dict):
            target = content[field][0]  # reach into images[0] / buffers[0] / models[0]
            field = rng.choice([*target, "zz"])
        target[field] = rng.choice(_FUZZ_VALUES) if rng.random() < 0.5 else _random_json(rng)
        frames[4] = json.dumps(content).encode()
    elif op == 6:  # nasty raw JSON
        frames[rng.choice([2, 3, 4])] = rng.choice(_NASTY)
    elif op == 7:  # buffers added, dropped or corrupted
        if len(frames) > 5 and rng.random() < 0.5:
            del frames[rng.randrange(5, len(frames))]
        else:
            frames.append(rng.choice([PNG, EXR[:10], b"", rng.randbytes(50)]))
    elif op == 8:  # non-bytes frames, or not a list at all
        if rng.random() < 0.3:
            return rng.choice([None, b"".join(frames), "frames", 12, {"a": 1}, (f for f in frames)])
        frames[rng.randrange(len(frames))] = rng.choice([None, 7, "text", 1.5, [b"x"], object()])
        resign = False
    elif op == 9:  # parent id games
        frames[3] = rng.choice([b"", b"m-1", b"\xff\xfe", b"a b", b"x" * 200, b"m-1\n"])
    elif op == 10:  # routing ids left in front
        frames = [rng.randbytes(5), *frames]
        resign = False
    else:  # too many frames
        frames = frames + [b""] * rng.choice([1, MAX_FRAMES])
    if resign and key and len(frames) >= 5 and all(isinstance(f, bytes) for f in frames):
        frames[1] = sign(key, frames[2:])
    return frames


def test_fuzz_decode_yields_a_message_or_a_protocol_error() -> None:
    rng = random.Random(20250131)
    receivers = {None: Codec(None), KEY: Codec(KEY)}
    senders = {key: Codec(key) for key in receivers}
    valid = {key: [encode_sample(senders[key], t) for t in sorted(SAMPLES)] for key in receivers}
    outcomes: dict[str, int] = {}
    for i in range(10_000):
        key = KEY if i % 2 else None
        frames = _mutate(rng, rng.choice(valid[key]), key)
        try:
            msg = receivers[key].decode(frames)  # type: ignore[arg-type]
        except ProtocolError as err:
            assert err.code in ERROR_CODES, (err.code, frames)
            assert not err.message.startswith("internal decoder error"), (err, frames)
            assert isinstance(err.message, str) and (err.field is None or isinstance(err.field, str))
            outcomes[err.code] = outcomes.get(err.code, 0) + 1
        else:
            assert isinstance(msg, Message) and msg.msg_type in MESSAGE_TYPES
            outcomes["ok"] = outcomes.get("ok", 0) + 1
    # the fuzz reached every layer, not just the first checks
    for code in ("ok", "malformed", "too_large", "bad_signature", "replayed", "unsupported_version",
                 "unknown_type", "invalid_request"):
        assert outcomes.get(code, 0) > 0, outcomes
    for key, receiver in receivers.items():  # and the codecs still work afterwards
        for msg_type in SAMPLES:
            assert receiver.decode(encode_sample(senders[key], msg_type)).msg_type == msg_type
