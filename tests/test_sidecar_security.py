"""Who may talk to the sidecar: loopback by default, CurveZMQ with listed client keys otherwise, keys made
by `aigc-bridge keys`, and a connection file only its owner can read. Curve is tested on 127.0.0.1 (no
traffic ever leaves loopback)."""

from __future__ import annotations

import json
import stat
import time

import pytest

from aigc_bridge.client import Client
from aigc_bridge.errors import AigcError
from aigc_bridge.server import is_loopback, make_keypair

from .conftest import cli
from .sidecar import SidecarProcess


@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:0", "tcp://*:5555", "tcp://[::]:5555", "tcp://eth0:5555"])
def test_a_non_loopback_bind_without_keys_refuses_to_start(bind, tmp_path) -> None:
    conn = tmp_path / "conn.json"
    proc = cli("serve", "--bind", bind, "--connection-file", str(conn))
    assert proc.returncode == 2
    assert "not a loopback address" in proc.stderr and "--authorized-keys" in proc.stderr
    assert not conn.exists()


def test_curve_without_an_allow_list_is_not_enough_off_loopback(tmp_path) -> None:
    make_keypair(tmp_path, "server")
    proc = cli("serve", "--bind", "tcp://0.0.0.0:0", "--curve-key", str(tmp_path / "server.key_secret"))
    assert proc.returncode == 2 and "--authorized-keys" in proc.stderr


def test_loopback_means_loopback() -> None:
    for endpoint in ("tcp://127.0.0.1:5555", "tcp://127.0.0.2:1", "tcp://[::1]:5555", "tcp://localhost:0",
                     "ipc:///tmp/aigc.sock"):
        assert is_loopback(endpoint), endpoint
    for endpoint in ("tcp://0.0.0.0:5555", "tcp://*:0", "tcp://192.168.1.20:5555", "tcp://[::]:1",
                     "tcp://lo:5555", "tcp://render-box:5555", "ws://127.0.0.1:5555"):
        assert not is_loopback(endpoint), endpoint


def test_keys_command_makes_a_private_key_pair_and_never_overwrites(tmp_path) -> None:
    proc = cli("keys", str(tmp_path), "--name", "artist1")
    assert proc.returncode == 0, proc.stderr
    public, secret = tmp_path / "artist1.key", tmp_path / "artist1.key_secret"
    assert "secret-key" in secret.read_text() and "secret-key" not in public.read_text()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging leftovers
    before = secret.read_bytes()
    again = cli("keys", str(tmp_path), "--name", "artist1")
    assert again.returncode == 2 and "--force" in again.stderr and secret.read_bytes() == before


def test_curve_admits_listed_client_keys_only(tmp_path, tiny_sd) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "authorized"
    allowed.mkdir()
    make_keypair(keys, "server")
    make_keypair(keys, "artist")
    make_keypair(keys, "stranger")
    (allowed / "artist.key").write_bytes((keys / "artist.key").read_bytes())
    server = SidecarProcess(tmp_path, tiny_sd, "--curve-key", str(keys / "server.key_secret"),
                            "--authorized-keys", str(allowed))
    try:
        info = json.loads(server.connection_file.read_text())
        assert info["server_public_key"] and info["key"]
        assert stat.S_IMODE(server.connection_file.stat().st_mode) == 0o600

        with server.client(client_keys=keys / "artist.key_secret") as client:
            assert client.generate("hidden temple", steps=2, seed=3).seeds == [3]

        for options in ({"client_keys": keys / "stranger.key_secret"}, {"client_keys": None}):
            start = time.monotonic()
            with server.client(timeout=10, **options) as client, pytest.raises(AigcError) as refused:
                client.status()
            assert refused.value.code == "unauthorized", refused.value
            assert time.monotonic() - start < 5  # told, not left to time out

        with Client(server.endpoint, key=info["key"], timeout=10) as plain, pytest.raises(AigcError) as refused:
            plain.status()  # no Curve at all
        assert refused.value.code == "unauthorized"
        assert len(server.job_lines()) == 1
    finally:
        server.stop()
