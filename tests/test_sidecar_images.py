"""Input images through the real sidecar (`aigc-bridge serve` with the shipped texture-mini, real loopback
sockets): every bad image or image field is answered with a clear error naming the field and the limit, the
sidecar keeps serving, and a pre-1.2 peer is handled by the version rules of docs/protocol.md."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import datetime, timezone

import numpy as np
import pytest
import zmq

from aigc_bridge.client import Client
from aigc_bridge.errors import AigcError
from aigc_bridge.input_image import InputImage
from aigc_bridge.protocol import INPUT_ROLE, MAGIC, REPLY_TYPES, Codec, split_routing

from .sidecar import SidecarProcess
from .test_protocol_images import png, png_header

KEY = b"images-key-0123456789"


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """One signed sidecar with the shipped texture-mini (no --model)."""
    tmp = tmp_path_factory.mktemp("mini")
    key_file = tmp / "key"
    key_file.write_bytes(KEY)
    server = SidecarProcess(tmp, None, "--key-file", str(key_file))
    yield server
    server.stop()


def sign(body: list[bytes]) -> bytes:
    mac = hmac.new(KEY, digestmod=hashlib.sha256)
    for frame in body:
        mac.update(len(frame).to_bytes(8, "big") + frame)
    return mac.hexdigest().encode()


def raw_generate(msg_id: str, content: dict, buffers: list[bytes], version: str = "1.2") -> list[bytes]:
    """A generate written apart from the codec (whose encoder would refuse what these tests send)."""
    header = {"msg_id": msg_id, "msg_type": "generate", "version": version, "session": "img-test",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "request_key": f"rk-{msg_id}"}
    body = [json.dumps(header).encode(), b"", json.dumps(content).encode(), *buffers]
    return [MAGIC, sign(body), *body]


def desc(index: int, data: bytes, **over) -> dict:
    image = InputImage.from_bytes(data, "x")
    return {"index": index, "mime": image.mime, "role": INPUT_ROLE, "width": image.width,
            "height": image.height, **over}


class Peer:
    """A raw DEALER on the sidecar: send frames, read the one final answer (progress acks skipped)."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self.codec = Codec(KEY, accept=REPLY_TYPES)

    def ask(self, frames: list[bytes]):
        self.sock.send_multipart(frames)
        while True:
            assert self.sock.poll(20_000), "the sidecar stopped answering"
            msg = self.codec.decode(split_routing(self.sock.recv_multipart())[1])
            if msg.msg_type != "progress":
                return msg

    def close(self) -> None:
        self.sock.close()
        self.context.term()


RED = png(32, 32, (200, 30, 30))


def bad_cases():
    """(name, content, buffers, field, words in the message): what a careless or hostile client may send."""
    init = {"prompt": "p", "init": {"buffer": 0}, "steps": 2}
    yield "declared mime", {**init, "buffers": [desc(0, RED, mime="image/jpeg")]}, [RED], "init", "image/jpeg"
    yield "declared size", {**init, "buffers": [desc(0, RED, width=64)]}, [RED], "init", "declared 64 x 32"
    yield "unreadable", {**init, "buffers": [desc(0, RED)]}, [b"\x89PNG\r\n\x1a\n" + b"\0" * 4], "init", \
        "not a readable image"
    yield "not an image", {**init, "buffers": [desc(0, RED)]}, [b"GIF89a" + RED[6:]], "init", \
        "not a PNG, JPEG or WebP"
    yield "30000 px header", {**init, "buffers": [desc(0, RED, width=30_000, height=30_000)]}, \
        [png_header(30_000, 30_000)], "init", "at most 8192 pixels"
    yield "frame for no field", {**init, "buffers": [desc(0, RED), desc(1, RED)]}, [RED, RED], "buffers[1]", \
        "no field"
    yield "strength 0", {**init, "strength": 0, "buffers": [desc(0, RED)]}, [RED], "strength", "above 0"
    yield "strength 1.5", {**init, "strength": 1.5, "buffers": [desc(0, RED)]}, [RED], "strength", \
        "between 0.0 and 1.0"
    yield "mask without init", {"prompt": "p", "mask": {"buffer": 0}, "buffers": [desc(0, RED)]}, [RED], "mask", \
        "give init"
    small = png(16, 16, (255, 255, 255), "L")
    yield "mask of another size", {**init, "mask": {"buffer": 1}, "buffers": [desc(0, RED), desc(1, small)]}, \
        [RED, small], "mask", "must be the init's size"
    yield "controlnet the package lacks", {"prompt": "p", "steps": 2, "controls": [{"name": "canny", "image":
                                           {"buffer": 0}}], "buffers": [desc(0, RED)]}, [RED], \
        "controls[0].name", "no controlnet 'canny'"
    yield "steps x strength below 1", {**init, "strength": 0.2, "buffers": [desc(0, RED)]}, [RED], "strength", \
        "steps x strength must be at least 1"
    yield "too many controls", {"prompt": "p", "controls": [{"name": "depth", "image": {"buffer": i}}
                                                           for i in range(5)],
                                "buffers": [desc(i, RED) for i in range(5)]}, [RED] * 5, "controls", "limit is 4"


@pytest.mark.parametrize("name, content, buffers, field, words", list(bad_cases()),
                         ids=[c[0] for c in bad_cases()])
def test_bad_input_images_are_refused_by_field_and_the_sidecar_keeps_serving(
        mini, name, content, buffers, field, words) -> None:
    peer = Peer(mini.endpoint)
    try:
        answer = peer.ask(raw_generate(f"bad-{abs(hash(name))}", content, buffers))
        assert answer.msg_type == "error" and answer.content["code"] == "invalid_request", answer.content
        assert answer.content["field"] == field and words in answer.content["message"], answer.content
        assert peer.ask(raw_generate(f"ok-{abs(hash(name))}", {"prompt": "still here", "steps": 1, "seed": 1},
                                     [])).msg_type == "result"
    finally:
        peer.close()
    assert mini.proc.poll() is None


def test_list_models_advertises_what_a_request_may_ask(mini) -> None:
    with mini.client(timeout=10) as client:
        (model,) = client.list_models()
    assert model["size_multiple"] == 4 and (model["width"], model["height"]) == (32, 32)
    assert model["max_side"] == 4096 and model["tile_modes"] == ["none", "both", "x"]
    assert {"init", "mask"} <= set(model["accepts"]) and model["controlnets"] == []


def test_a_1_1_client_still_works(mini) -> None:
    peer = Peer(mini.endpoint)
    try:
        answer = peer.ask(raw_generate("old-client", {"prompt": "old", "steps": 1, "seed": 3}, [], version="1.1"))
    finally:
        peer.close()
    assert answer.msg_type == "result" and answer.content["images"][0]["seed"] == 3
    assert answer.version == "1.2"


def test_images_against_a_1_1_server_are_a_clear_error(tmp_path) -> None:
    """An old server acknowledges a generate (and would ignore its images): the client stops at the ack.
    The old server is a stand-in speaking 1.1 on a real socket; there is no 1.1 sidecar to start."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    old = Codec(KEY, session="old-server")
    seen: list[str] = []

    def serve() -> None:
        while router.poll(5000):
            route, body = split_routing(router.recv_multipart())
            msg = old.decode(body)
            seen.append(msg.msg_type)
            frames = old.reply(msg, "progress" if msg.msg_type == "generate" else "cancel_reply",
                               {"step": 0, "total": 2, "stage": "queued", "queue_position": 0}
                               if msg.msg_type == "generate" else {"cancelled": True, "state": "queued"})
            header = json.loads(frames[2])
            header["version"] = "1.1"
            frames[2] = json.dumps(header).encode()
            frames[1] = old._sign(frames[2:])
            router.send_multipart([*route, *frames])
            if msg.msg_type == "cancel":
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with Client(f"tcp://127.0.0.1:{port}", key=KEY, timeout=10) as client:
            with pytest.raises(AigcError) as info:
                client.generate("restyle", init=RED, strength=0.5, steps=2)
            assert client.server_version == "1.1"
            thread.join(10)
    finally:
        router.close()
        context.term()
    assert info.value.code == "unsupported_version" and info.value.field == "init"
    assert "1.2" in info.value.message and "1.1" in info.value.message
    assert seen == ["generate", "cancel"]  # and the old server was told to drop the job


# --- image conditioning end to end: texture-mini through the sidecar ---------------------------------------


@pytest.fixture(scope="module")
def mini_pipeline():
    from aigc_bridge.engine import Pipeline
    from aigc_bridge.models import default_model_dir

    return Pipeline.load(default_model_dir(), provider="cpu")


@pytest.fixture(scope="module")
def red_bricks(mini) -> bytes:
    """A red brick wall texture-mini made itself: the init of the tests below."""
    with mini.client(timeout=30) as client:
        return client.generate("red brick wall", seed=7, steps=20).images[0].data


def rgb(data: bytes):
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def blueness(data: bytes) -> float:
    pixels = rgb(data)
    return float((pixels[..., 2] - pixels[..., 0]).mean())


def test_image_to_image_at_0_7_is_bluer_than_at_0_2(mini, red_bricks) -> None:
    with mini.client(timeout=30) as client:
        weak, strong = (client.generate("blue tiles", init=red_bricks, strength=s, seed=3, steps=20)
                        for s in (0.2, 0.7))
    assert blueness(red_bricks) < blueness(weak.images[0].data) < blueness(strong.images[0].data)
    assert strong.request["strength"] == 0.7 and strong.request["init"]["sha256"] == \
        hashlib.sha256(red_bricks).hexdigest()


def test_an_inpainted_square_changes_inside_and_is_byte_identical_outside(mini, red_bricks) -> None:
    import numpy as np

    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    mask_png = png_from(mask)
    with mini.client(timeout=30) as client:
        out = client.generate("blue tiles", init=red_bricks, mask=mask_png, seed=5, steps=20).images[0].data
    before, after = rgb(red_bricks), rgb(out)
    inside = mask > 0
    np.testing.assert_array_equal(after[~inside], before[~inside])
    assert np.abs(after[inside] - before[inside]).mean() > 20
    assert blueness(png_from(after[8:24, 8:24].astype(np.uint8))) > blueness(png_from(
        before[8:24, 8:24].astype(np.uint8)))


def png_from(array) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_client_result_bytes_are_the_in_process_bytes(mini, mini_pipeline, red_bricks) -> None:
    import numpy as np

    from aigc_bridge.assets.writers import png_bytes
    from aigc_bridge.request import GenerateRequest

    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 10:30] = 255
    request = GenerateRequest("green planks", init=InputImage.from_bytes(red_bricks, "init"), strength=0.6,
                              mask=InputImage.from_bytes(png_from(mask), "mask"), mask_blur=2, seed=11, steps=12)
    with mini.client(timeout=30) as client:
        remote = client.generate_request(request)
    mine = mini_pipeline.generate(request)
    assert remote.images[0].data == png_bytes(mine.images[0])
    assert remote.request == mine.request.to_dict()


def test_bad_images_the_model_refuses_through_the_client(mini, red_bricks) -> None:
    """What only the model or the decoder can tell, answered as errors naming the field; the sidecar serves on."""
    cut = red_bricks[: len(red_bricks) // 2]  # header intact, data cut short
    cases = [({"init": red_bricks, "mask": png(16, 16, (255, 255, 255), "L")}, "mask", "must be the init's size"),
             ({"init": cut}, "init", "not a readable image"),
             ({"init": red_bricks, "strength": 0.05, "steps": 4}, "strength", "steps x strength"),
             ({"controls": [{"name": "canny", "image": red_bricks}]}, "controls", "canny")]
    with mini.client(timeout=30) as client:
        for fields, field, words in cases:
            with pytest.raises(AigcError) as info:
                client.generate("blue tiles", seed=1, **fields)
            assert info.value.code == "invalid_request", (fields.keys(), info.value)
            assert (info.value.field or "").startswith(field) and words in info.value.message, info.value
        assert client.generate("still serving", seed=1, steps=2).seeds == [1]


def test_cli_generate_endpoint_with_an_init_writes_the_in_process_file(mini, red_bricks, tmp_path) -> None:
    from .conftest import cli

    big = tmp_path / "wall.png"  # twice the model's size: both sides say how they resized it
    big.write_bytes(png_from(np.kron(rgb(red_bricks), np.ones((2, 2, 1))).astype(np.uint8)))
    mask = tmp_path / "mask.png"
    square = np.zeros((64, 64), np.uint8)
    square[16:48, 16:48] = 255
    mask.write_bytes(png_from(square))
    args = ["generate", "blue tiles", "--seed", "9", "--steps", "10", "--init", str(big), "--mask", str(mask),
            "--strength", "0.8", "--mask-blur", "2", "--width", "32", "--height", "32"]
    here = cli(*args, "-o", str(tmp_path / "here.png"))
    there = cli(*args, "-o", str(tmp_path / "there.png"), "--connection-file", str(mini.connection_file))
    assert here.returncode == 0 and there.returncode == 0, here.stderr + there.stderr
    assert (tmp_path / "there.png").read_bytes() == (tmp_path / "here.png").read_bytes()
    assert "resized 64x64" in here.stderr and "resized 64x64" in there.stderr


def test_seamless_band_through_the_sidecar_makes_the_init_tile_and_keeps_the_rest(mini, mini_pipeline) -> None:
    """What Blender's Make Tileable sends: a non-tiling image with seamless_band comes back the same size,
    as make_seamless makes it in process (the same bytes), wrapping, with every pixel outside the band the
    input's."""
    import numpy as np
    from PIL import Image

    from aigc_bridge.assets.seams import seam_ratio
    from aigc_bridge.assets.writers import png_bytes
    from aigc_bridge.request import GenerateRequest
    from aigc_bridge.seamless import make_seamless

    photo = mini_pipeline.generate(GenerateRequest("grey stone floor", seed=6, tile="none")).images[0]
    big = np.asarray(Image.fromarray(np.round(photo * 255).astype(np.uint8)).resize((64, 48), Image.LANCZOS))
    with mini.client(timeout=60) as client:
        out = client.generate("grey stone floor", init=png_from(big), seamless_band=0.25, seed=5, steps=20)
    image = out.images[0]
    mine = make_seamless(mini_pipeline, big / np.float32(255.0), prompt="grey stone floor", seed=5, steps=20)
    assert image.data == png_bytes(mine.image)
    after = rgb(image.data)
    assert after.shape == big.shape
    assert out.request["seamless_band"] == 0.25 and out.request["init"]["width"] == 64
    before_ratio = np.mean([seam_ratio(big / 255.0, axis) for axis in (0, 1)])
    after_ratio = np.mean([seam_ratio(after / 255.0, axis) for axis in (0, 1)])
    assert before_ratio > 5 and after_ratio < 1.5, (before_ratio, after_ratio)
    np.testing.assert_array_equal(after[14:34, 20:44], big[14:34, 20:44])  # the middle is outside the band
    with mini.client(timeout=30) as client:
        with pytest.raises(AigcError, match="seamless_band makes an init image tile") as err:
            client.generate("grey stone floor", seamless_band=0.25)
        assert err.value.field == "seamless_band"
