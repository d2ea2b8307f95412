"""Protocol 1.2: a generate carries its input images as binary frames of role ``input``, each named by one
field ({"buffer": i}), declared format and size checked against the image's own header; a result's effective
request names them by record. Codec level; tests/test_sidecar_images.py drives the real sidecar."""

from __future__ import annotations

import io
import struct
import zlib

import pytest

from aigc_bridge.input_image import InputImage
from aigc_bridge.protocol import (
    INPUT_ROLE,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    REQUEST_TYPES,
    Codec,
    ProtocolError,
    generate_content,
)
from aigc_bridge.request import ControlInput, GenerateRequest

KEY = b"image-key"


def png(width: int = 16, height: int = 16, colour=(200, 30, 30), mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (width, height), colour if mode == "RGB" else colour[0]).save(buf, "PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """Only a PNG's signature and IHDR: what a decompression bomb shows before its data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def codecs():
    return Codec(KEY, accept=REPLY_TYPES), Codec(KEY, accept=REQUEST_TYPES)


def send(content: dict, buffers=(), version: str | None = None):
    client, server = codecs()
    frames = client.encode("generate", content, buffers=buffers, request_key="rk-1") if version is None else \
        _with_version(client, content, buffers, version)
    return server.decode(frames)


def _with_version(client: Codec, content: dict, buffers, version: str) -> list[bytes]:
    import json

    frames = client.encode("generate", content, buffers=buffers, request_key="rk-1")
    header = json.loads(frames[2])
    header["version"] = version
    frames[2] = json.dumps(header).encode()
    frames[1] = client._sign(frames[2:])
    return frames


def refused(content: dict, buffers=()) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        send(content, buffers)
    assert info.value.code == "invalid_request"
    return info.value


def init_desc(data: bytes, index: int = 0, **over) -> dict:
    image = InputImage.from_bytes(data, "x")
    return {"index": index, "mime": image.mime, "role": INPUT_ROLE, "width": image.width, "height": image.height,
            **over}


def test_images_round_trip_by_field() -> None:
    init, mask, depth = png(16, 16), png(16, 16, (255, 255, 255), "L"), png(16, 16, (90, 90, 90), "L")
    request = GenerateRequest(prompt="blue tiles", init=InputImage.from_bytes(init, "init"), strength=0.7,
                              mask=InputImage.from_bytes(mask, "mask"), mask_blur=4,
                              controls=(ControlInput("depth", InputImage.from_bytes(depth, "controls[0].image"),
                                                     0.8, 0.0, 0.5),))
    content, buffers = generate_content({"prompt": request.prompt, "init": request.init, "strength": 0.7,
                                         "mask": request.mask, "mask_blur": 4, "controls": request.controls})
    assert content["init"] == {"buffer": 0} and content["controls"][0]["image"] == {"buffer": 2}
    assert [d["role"] for d in content["buffers"]] == [INPUT_ROLE] * 3
    msg = send(content, buffers)
    assert msg.request == request
    assert msg.request.init.data == init and msg.request.controls[0].image.data == depth
    assert msg.ignored_fields == ()


def test_a_result_names_its_input_images_by_record() -> None:
    _, server = codecs()
    client = Codec(KEY, accept=REPLY_TYPES)
    init = InputImage.from_bytes(png(), "init")
    request = GenerateRequest(prompt="p", init=init, strength=0.5)
    content = {"images": [{"buffer": 0, "seed": 1, "model_id": "m", "model_hash": "h", "provider": "cpu"}],
               "request": request.to_dict(), "composed_prompt": {"prompt": "p", "negative_prompt": ""},
               "buffers": [{"index": 0, "mime": "image/png", "role": "image"}]}
    msg = client.decode(server.encode("result", content, parent_id="m1", buffers=[png()], request_key="rk"))
    assert msg.content["request"]["init"]["sha256"] == init.sha256


@pytest.mark.parametrize("case, field, words", [
    ("mime", "init", "declared image/jpeg"),
    ("size", "init", "declared 32 x 16"),
    ("no_size", "buffers[0]", "width and height are required"),
    ("truncated", "init", "not a readable image"),
    ("not_an_image", "init", "not a PNG, JPEG or WebP"),
    ("bomb", "init", "at most 8192 pixels"),
    ("no_field", "buffers[1]", "no field of the request names"),
    ("not_input", "init", "not a buffer of role input"),
    ("twice", "mask", "init names too"),
    ("no_buffer", "init", '{"buffer": index}'),
    ("missing_frame", "buffers", "describes 1 buffers but 0"),
    ("control_without_image", "controls[0].image", "names no image"),
])
def test_bad_input_frames_name_the_field(case: str, field: str, words: str) -> None:
    data = png(16, 16)
    content: dict = {"prompt": "p", "init": {"buffer": 0}, "buffers": [init_desc(data)]}
    buffers = [data]
    if case == "mime":
        content["buffers"][0]["mime"] = "image/jpeg"
    elif case == "size":
        content["buffers"][0]["width"] = 32
    elif case == "no_size":
        del content["buffers"][0]["width"]
    elif case == "truncated":
        buffers = [data[:20]]
    elif case == "not_an_image":
        buffers = [b"GIF89a" + data[6:]]
    elif case == "bomb":
        buffers = [png_header(30_000, 30_000)]
        content["buffers"][0].update(width=30_000, height=30_000)
    elif case == "no_field":
        content["buffers"].append(init_desc(data, 1))
        buffers.append(data)
    elif case == "not_input":
        content["buffers"][0]["role"] = "image"
    elif case == "twice":
        content["mask"] = {"buffer": 0}
    elif case == "no_buffer":
        content["init"] = "init.png"
    elif case == "missing_frame":
        buffers = []
    elif case == "control_without_image":
        content = {"prompt": "p", "controls": [{"name": "depth"}]}
        buffers = []
    err = refused(content, buffers)
    assert err.field == field, err
    assert words in err.message, err.message


def test_a_1_1_client_still_works_and_a_1_2_server_says_so() -> None:
    assert PROTOCOL_VERSION == "1.2"
    msg = send({"prompt": "p", "steps": 2}, version="1.1")
    assert msg.version == "1.1" and msg.request == GenerateRequest(prompt="p", steps=2)


def test_generate_content_refuses_a_record_without_bytes() -> None:
    record = InputImage.from_record(InputImage.from_bytes(png(), "init").to_record(), "init")
    with pytest.raises(ProtocolError) as info:
        generate_content({"prompt": "p", "init": record})
    assert info.value.field == "init"


def test_docs_image_example_is_what_the_codec_sends() -> None:
    import json
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- example: generate_images -->\n```json\n(.*?)```", text, re.S).group(1)
    init, mask = png(64, 64), png(64, 64, (255, 255, 255), "L")
    content, buffers = generate_content({"prompt": "blue glazed tiles", "init": InputImage.from_bytes(init, "init"),
                                         "strength": 0.7, "mask": InputImage.from_bytes(mask, "mask"),
                                         "mask_blur": 4})
    assert content == json.loads(block)
    assert send(content, buffers).request.mask.data == mask
