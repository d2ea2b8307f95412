"""Fuzz the real sidecar over a real socket: 10,000 malformed messages (random frames, wrong types, bad
JSON, wrong versions, absurd sizes, bad signatures, replays) and oversized frames. The server must stay
up, answer every message it can attribute with the right error (and every other one with an unattributed
error), run nothing, and then serve a valid request."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from datetime import datetime, timezone

import pytest
import zmq

from aigc_bridge.client import Client
from aigc_bridge.errors import AigcError
from aigc_bridge.protocol import (
    MAGIC,
    MAX_FRAMES,
    MAX_HEADER_BYTES,
    MAX_REQUEST_FRAME_BYTES,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    Codec,
    split_routing,
)

from .sidecar import SidecarProcess

KEY = b"fuzz-key-0123456789abcdef"
MESSAGES = 10_000


def sign(key: bytes, body: list[bytes]) -> bytes:
    """docs/protocol.md section 4, written apart from the codec."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in body:
        mac.update(len(frame).to_bytes(8, "big") + frame)
    return mac.hexdigest().encode()


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message(msg_id: str, msg_type: str = "generate", content: object = None, *, key: bytes | None = KEY,
            header: dict | None = None, content_raw: bytes | None = None, parent: bytes = b"",
            buffers: tuple[bytes, ...] = ()) -> list[bytes]:
    head = {"msg_id": msg_id, "msg_type": msg_type, "version": PROTOCOL_VERSION, "session": "fuzzer",
            "date": now(), "request_key": f"rk-{msg_id}"}
    head.update(header or {})
    head = {k: v for k, v in head.items() if v is not ...}
    if content_raw is None:
        content_raw = json.dumps({"prompt": "x"} if content is None else content).encode()
    body = [json.dumps(head).encode(), parent, content_raw, *buffers]
    return [MAGIC, sign(key, body) if key else b"", *body]


BAD_FIELDS = [  # (content, field the error must name)
    ({"prompt": "x", "steps": "20"}, "steps"), ({"prompt": "x", "steps": -1}, "steps"),
    ({"prompt": "x", "width": 5000}, "width"), ({"prompt": "x", "guidance": "high"}, "guidance"),
    ({"prompt": "x", "seed": -5}, "seed"), ({"prompt": "x", "scheduler": "nope"}, "scheduler"),
    ({"prompt": "x", "tile": 3}, "tile"), ({"prompt": "x", "count": 0}, "count"), ({"prompt": 5}, "prompt"),
    ({"steps": 4}, "prompt"), ({"prompt": "x", "kind": "mesh"}, "kind"), ({"prompt": "x", "format": "gif"}, "format"),
    ({"prompt": "x", "negative_prompt": None}, "negative_prompt"), ({"prompt": "x", "steps": 1.5}, "steps"),
    ({"prompt": "x", "count": True}, "count"),
]


def make_case(rng: random.Random, i: int, sent: list[list[bytes]]) -> tuple[list[bytes], tuple]:
    """One malformed (or, 1 in 20, valid control) message and what the server must answer:
    ("error", msg_id, code) attributed, ("reply", msg_id, type), or ("unattributed",)."""
    mid = f"fz-{i}"
    kind = rng.randrange(20)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 9))], ("unattributed",)
    if kind == 1:
        return [MAGIC, *(rng.randbytes(rng.randrange(0, 60)) for _ in range(rng.randrange(0, 9)))], \
            ("unattributed",)
    if kind == 2:
        raw = rng.choice([b"{", b"[1,2]", b"null", b'{"prompt": NaN}', b'{"a":1,"a":2}', b"\xff\xfe",
                          b'{"prompt": "x", "steps": 1' + b"0" * 30 + b"}", rng.randbytes(30)])
        return message(mid, content_raw=raw), ("error", mid, "malformed")
    if kind == 3:
        content, where = rng.choice(BAD_FIELDS)
        return message(mid, content=content), ("error", mid, "invalid_request", where)
    if kind == 4:
        return message(mid, header={"version": rng.choice(["2.0", "0.9", "99.1"])}), \
            ("error", mid, "unsupported_version")
    if kind == 5:
        return message(mid, msg_type=rng.choice(["explode", "generate_v2", "x"])), ("error", mid, "unknown_type")
    if kind == 6:
        return message(mid, msg_type=rng.choice(sorted(REPLY_TYPES)), parent=b"m-1"), \
            ("error", mid, "unexpected_type")
    if kind == 7:
        return message(mid, key=None), ("unattributed", "bad_signature")
    if kind == 8:
        return message(mid, key=b"not the key"), ("unattributed", "bad_signature")
    if kind == 9:
        msg_type = rng.choice(["status", "ping", "list_models"])
        frames = message(mid, msg_type=msg_type, content={}, header={"request_key": ...})
        sent.append(frames)
        return frames, ("reply", mid, f"{msg_type}_reply")
    if kind == 10 and sent:
        frames = rng.choice(sent)  # byte for byte again
        return frames, ("error", json.loads(frames[2])["msg_id"], "replayed")
    if kind == 11:
        return message(mid, header={"pad": "x" * (MAX_HEADER_BYTES + 10)}), ("unattributed", "too_large")
    if kind == 12:
        frames = message(mid)
        return frames + [b"b"] * (MAX_FRAMES - len(frames) + rng.randrange(1, 200)), ("unattributed", "too_large")
    if kind == 13:
        frames = message(mid)
        frames[2] = rng.choice([b"{", b'{"msg_id": 1e999}', b"[]", b'{"x": 1' + b"1" * 40 + b"}"])
        frames[1] = sign(KEY, frames[2:])
        return frames, ("unattributed", "malformed")
    if kind == 14:
        return message(mid, header={"request_key": ...}), ("error", mid, "invalid_request", "header.request_key")
    if kind == 15:
        return message(mid, msg_type="cancel", content={"target_msg_id": "a", "target_request_key": "b"}), \
            ("error", mid, "invalid_request")
    if kind == 16:
        return message(mid, header={"date": "2001-01-01T00:00:00Z"}), ("error", mid, "expired")
    if kind == 17:
        return message(mid, content={"prompt": "x", "buffers": [{"index": 0, "mime": "image/png",
                                                                  "role": "image"}]}), \
            ("error", mid, "invalid_request")
    if kind == 18:  # over the prompt limit; now and then a 3 MiB one, just under the frame limit
        size = rng.randrange(3_000_000, 3_500_000) if i % 1000 == 18 else rng.randrange(100_001, 120_000)
        return message(mid, content_raw=b'{"prompt": "' + b"a" * size + b'"}'), \
            ("error", mid, "invalid_request", "prompt")
    return message(mid, header={"msg_id": 12}), ("unattributed", "malformed")


@pytest.fixture
def keyed_sidecar(tmp_path, tiny_sd):
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    server = SidecarProcess(tmp_path, tiny_sd, "--key-file", str(key_file))
    yield server
    server.stop()


def test_ten_thousand_malformed_messages_then_a_valid_request(keyed_sidecar) -> None:
    rng = random.Random(20250131)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(keyed_sidecar.endpoint)
    codec = Codec(KEY, accept=REPLY_TYPES)  # every answer must itself be a valid, signed message
    sent: list[list[bytes]] = []
    attributed = unattributed = 0
    try:
        for start in range(0, MESSAGES, 250):
            cases = [make_case(rng, i, sent) for i in range(start, min(start + 250, MESSAGES))]
            expected: dict[str, list[tuple]] = {}  # msg_id -> answers due, in order (a replay reuses an id)
            for _, exp in cases:
                if exp[0] != "unattributed":
                    expected.setdefault(exp[1], []).append(exp)
            for frames, _ in cases:
                sock.send_multipart(frames)
            for _ in cases:  # exactly one answer per message, in order of arrival
                assert sock.poll(20_000), "the server stopped answering"
                _, body = split_routing(sock.recv_multipart())
                msg = codec.decode(body)
                if msg.parent_id is None:
                    unattributed += 1
                    assert msg.msg_type == "error"
                    continue
                exp = expected[msg.parent_id].pop(0)
                if not expected[msg.parent_id]:
                    del expected[msg.parent_id]
                attributed += 1
                if exp[0] == "reply":
                    assert msg.msg_type == exp[2]
                else:
                    assert (msg.msg_type, msg.content.get("code")) == ("error", exp[2]), (exp, msg.content)
                    if len(exp) > 3:
                        assert msg.content["field"] == exp[3]
            assert not expected, f"no answer for {sorted(expected)[:5]}"
    finally:
        sock.close()
        context.term()
    assert attributed > 5000 and unattributed > 2000

    assert keyed_sidecar.proc.poll() is None
    with keyed_sidecar.client(timeout=10) as client:
        assert client.generate("after the storm", steps=2, seed=1).seeds == [1]
    assert len(keyed_sidecar.job_lines()) == 1  # nothing the fuzzer sent ever ran


def test_oversized_frames_disconnect_only_that_peer(keyed_sidecar) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sock.connect(keyed_sidecar.endpoint)
    try:
        frames = message("big", content_raw=b"x" * (MAX_REQUEST_FRAME_BYTES + 1))
        sock.send_multipart(frames)
        assert monitor.poll(20_000), "the server kept a peer that sent an oversized frame"
        assert not sock.poll(100)  # and never read it
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()
        context.term()
    assert keyed_sidecar.proc.poll() is None
    with keyed_sidecar.client(timeout=10) as client:
        assert client.status()["state"] == "ready"


@pytest.mark.parametrize("key", [b"another key entirely", None])
def test_a_wrong_or_missing_signature_is_refused_clearly(keyed_sidecar, key) -> None:
    with Client(keyed_sidecar.endpoint, key=key, timeout=10) as client, pytest.raises(AigcError) as info:
        client.generate("should not run", steps=2)
    assert info.value.code == "bad_signature"
    assert keyed_sidecar.job_lines() == []


# --- protocol 1.2: input image frames --------------------------------------------------------------------


def _png(rng: random.Random, size: int = 16) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3)).save(buf, "PNG")
    return buf.getvalue()


def _input(index: int, data: bytes, **over) -> dict:
    from aigc_bridge.input_image import InputImage

    image = InputImage.from_bytes(data, "x")
    return {"index": index, "mime": image.mime, "role": "input", "width": image.width, "height": image.height,
            **over}


def image_case(rng: random.Random, i: int, good: bytes) -> tuple[list[bytes], tuple]:
    """One generate with broken input frames, and the field its error must name (None: any field)."""
    from .test_protocol_images import png_header

    mid = f"im-{i}"
    field = rng.choice(["init", "mask", "depth", "controls[0].image"])
    content: dict = {"prompt": "x", "steps": 1}
    if field == "controls[0].image":
        content["controls"] = [{"name": "depth", "image": {"buffer": 0}}]
    else:
        content[field] = {"buffer": 0}
        if field == "mask":
            content["init"] = {"buffer": 1}
    buffers = [good] + ([good] if field == "mask" else [])
    descs = [_input(k, good) for k in range(len(buffers))]
    kind = rng.randrange(9)
    if kind == 0:  # cut inside the header: nothing readable
        buffers[0] = good[:rng.randrange(0, 24)]
    elif kind == 1:  # declared size differs from the header's
        descs[0]["width"] = rng.choice([1, 15, 17, 4096, 8192, 2**31 - 1])
    elif kind == 2:  # declared format differs
        descs[0]["mime"] = rng.choice(["image/jpeg", "image/webp"])
    elif kind == 3:  # a header that announces a decompression bomb
        side = rng.choice([8193, 30_000, 65_535, 2**31 - 1])
        buffers[0] = png_header(side, rng.choice([1, side]))
        descs[0].update(width=side, height=int.from_bytes(buffers[0][20:24], "big"))
    elif kind == 4:  # a frame for no field
        buffers.append(good)
        descs.append(_input(len(descs), good))
        field = f"buffers[{len(descs) - 1}]"
    elif kind == 5:  # random bytes behind a PNG signature, or no signature at all
        buffers[0] = rng.choice([b"\x89PNG\r\n\x1a\n", b""]) + rng.randbytes(rng.randrange(0, 64))
    elif kind == 6:  # a reference to a buffer that is not there, or not an input
        ref = rng.choice([{"buffer": 7}, {"buffer": -1}, {"buffer": "0"}, {"buf": 0}, [0], 0, "init.png"])
        if field == "controls[0].image":
            content["controls"][0]["image"] = ref
        else:
            content[field] = ref
    elif kind == 7:  # descriptors that do not describe the frames
        descs = descs[:-1] if rng.random() < 0.5 else [*descs, _input(len(descs), good)]
        field = None
    else:  # too many frames for one message
        buffers += [good] * (MAX_FRAMES + rng.randrange(0, 8))
        return message(mid, content={**content, "buffers": descs}, buffers=tuple(buffers)), ("unattributed",)
    return message(mid, content={**content, "buffers": descs}, buffers=tuple(buffers)), \
        ("error", mid, "invalid_request", field)


def test_fuzzed_input_frames_never_kill_the_sidecar(keyed_sidecar) -> None:
    rng = random.Random(1202)
    good = _png(rng)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(keyed_sidecar.endpoint)
    codec = Codec(KEY, accept=REPLY_TYPES)
    try:
        for start in range(0, 1000, 100):
            cases = [image_case(rng, i, good) for i in range(start, start + 100)]
            for frames, _ in cases:
                sock.send_multipart(frames)
            expected = {exp[1]: exp for _, exp in cases if exp[0] == "error"}
            unattributed = sum(exp[0] == "unattributed" for _, exp in cases)
            for _ in cases:
                assert sock.poll(20_000), "the sidecar stopped answering"
                msg = codec.decode(split_routing(sock.recv_multipart())[1])
                assert msg.msg_type == "error", msg.content  # nothing broken ever ran
                if msg.parent_id is None:
                    unattributed -= 1
                    continue
                exp = expected.pop(msg.parent_id)
                assert msg.content["code"] == exp[2], (exp, msg.content)
                if exp[3] is not None:
                    assert msg.content["field"] == exp[3], (exp, msg.content)
            assert not expected and unattributed == 0
    finally:
        sock.close()
        context.term()
    assert keyed_sidecar.proc.poll() is None
    with keyed_sidecar.client(timeout=10) as client:
        assert client.generate("after the images", steps=1, seed=2).seeds == [2]
    assert len(keyed_sidecar.job_lines()) == 1


def test_damaged_image_data_behind_a_valid_header_fails_only_that_job(keyed_sidecar) -> None:
    """Headers that pass (declared size and format right) over data cut short or scrambled: found when the
    worker decodes the image, each job ends with invalid_request naming the field, the next one runs."""
    rng = random.Random(77)
    good = _png(rng, 32)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(keyed_sidecar.endpoint)
    codec = Codec(KEY, accept=REPLY_TYPES)
    try:
        for i in range(12):
            data = good[:rng.randrange(40, len(good) - 16)] if i % 2 else \
                good[:33] + rng.randbytes(len(good) - 45) + good[-12:]
            field = "init" if i % 3 else "mask"  # a damaged mask over a good init, now and then
            content = {"prompt": "x", "steps": 1, "seed": i, "init": {"buffer": 0}, "strength": 1.0,
                       "buffers": [_input(0, good)]}
            buffers = (data,)
            if field == "mask":
                content.update(mask={"buffer": 1}, buffers=[_input(0, good), _input(1, good)])
                buffers = (good, data)
            sock.send_multipart(message(f"dmg-{i}", content=content, buffers=buffers))
            while True:
                assert sock.poll(30_000), "the sidecar stopped answering"
                msg = codec.decode(split_routing(sock.recv_multipart())[1])
                if msg.msg_type != "progress":
                    break
            assert msg.msg_type == "error" and msg.content["field"] == field, msg.content
            assert msg.content["code"] == "invalid_request", msg.content
    finally:
        sock.close()
        context.term()
    with keyed_sidecar.client(timeout=10) as client:
        assert client.generate("after the damage", steps=1, seed=3).seeds == [3]
