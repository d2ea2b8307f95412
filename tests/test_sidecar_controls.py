"""ControlNet units through the real sidecar: a tiny SD package exported with two controlnets (the fixtures of
tests/test_controlnet.py), advertised by list_models, driven by the client API and `generate --endpoint` with
the same arguments as in process, and writing the same bytes."""

from __future__ import annotations

import numpy as np
import pytest

from aigc_bridge.assets.writers import png_bytes
from aigc_bridge.engine import Pipeline
from aigc_bridge.errors import AigcError
from aigc_bridge.input_image import InputImage
from aigc_bridge.request import ControlInput, GenerateRequest

from .conftest import cli
from .sidecar import SidecarProcess
from .test_controlnet import controlnets, sd_cn  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def cn_sidecar(sd_cn, tmp_path_factory):  # noqa: F811
    server = SidecarProcess(tmp_path_factory.mktemp("cn"), sd_cn)
    yield server
    server.stop()


def guide(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))).astype(np.float32))


def test_list_models_names_the_controlnets(cn_sidecar) -> None:
    with cn_sidecar.client(timeout=10) as client:
        (model,) = client.list_models()
    assert model["controlnets"] == ["canny", "depth"] and "controls" in model["accepts"]


def test_two_controls_through_the_client_are_the_in_process_bytes(cn_sidecar, sd_cn) -> None:  # noqa: F811
    first, second = guide(1), guide(2)
    with cn_sidecar.client(timeout=30) as client:
        remote = client.generate("red brick wall", seed=4, steps=4, controls=[
            {"name": "depth", "image": first, "scale": 0.7, "end": 0.6},
            ControlInput("canny", InputImage.from_bytes(second, "controls[1].image"), 1.3, 0.3, 1.0)])
    request = GenerateRequest("red brick wall", seed=4, steps=4, controls=(
        ControlInput("depth", InputImage.from_bytes(first, "x"), 0.7, 0.0, 0.6),
        ControlInput("canny", InputImage.from_bytes(second, "x"), 1.3, 0.3, 1.0)))
    mine = Pipeline.load(sd_cn, provider="cpu").generate(request)
    assert remote.images[0].data == png_bytes(mine.images[0])
    assert [c["name"] for c in remote.request["controls"]] == ["depth", "canny"]


def test_cli_generate_endpoint_with_control_writes_the_in_process_file(cn_sidecar, sd_cn, tmp_path) -> None:  # noqa: F811
    (tmp_path / "depth.png").write_bytes(guide(3))
    args = ["generate", "oak planks", "--seed", "2", "--steps", "3", "--control",
            f"depth={tmp_path / 'depth.png'}:0.8"]
    here = cli(*args, "-o", str(tmp_path / "here.png"), "--model", str(sd_cn))
    there = cli(*args, "-o", str(tmp_path / "there.png"), "--connection-file", str(cn_sidecar.connection_file))
    assert here.returncode == 0 and there.returncode == 0, here.stderr + there.stderr
    assert (tmp_path / "there.png").read_bytes() == (tmp_path / "here.png").read_bytes()


def test_a_controlnet_the_package_lacks_is_refused_by_name(cn_sidecar) -> None:
    with cn_sidecar.client(timeout=10) as client:
        with pytest.raises(AigcError) as info:
            client.generate("x", steps=2, controls=[{"name": "normal", "image": guide(4)}])
        assert client.generate("still serving", steps=1, seed=1).seeds == [1]
    assert info.value.code == "invalid_request" and info.value.field == "controls[0].name"
    assert "normal" in info.value.message and "canny, depth" in info.value.message
