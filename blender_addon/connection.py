"""Which sidecar to talk to, and a Client for it (bpy-free: the preferences pass plain values in).

Two ways, as in the preferences: LOCAL, through a connection file (the one the sidecar this Blender started
wrote, or one `aigc-bridge serve --connection-file` wrote), re-read for every run so a restarted sidecar
(new port, new key) is found; or ENDPOINT, an address with keys, for a sidecar on another machine.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from aigc_bridge.client import Client
from aigc_bridge.errors import AigcError

LOCAL, ENDPOINT = "LOCAL", "ENDPOINT"
DEFAULT_CONNECTION_FILE = os.path.join("~", ".aigc", "sidecar.json")
_ENDPOINT = re.compile(r"^(tcp://(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):\d{1,5}|ipc://\S+|inproc://\S+)$")


@dataclass(frozen=True)
class Settings:
    """What the preferences say about the connection."""

    mode: str = LOCAL
    connection_file: str = ""
    endpoint: str = "tcp://127.0.0.1:5555"
    key_file: str = ""
    server_public_key: str = ""
    client_key_file: str = ""
    timeout_s: float = 10.0


def _read_text(path: str, what: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise AigcError("connection_file" if what == "key" else "curve_key",
                        f"cannot read the {what} file {path}: {exc.strerror}", what) from None


def _server_key(value: str) -> str | None:
    """The server's Z85 public key, typed in or as the path of its ``.key`` file."""
    value = value.strip()
    if not value:
        return None
    path = os.path.expanduser(value)
    if os.path.isfile(path):
        import zmq.auth

        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise AigcError("unauthorized", f"cannot read the server key {value}: {exc}",
                            "server_public_key") from None
        return public.decode("ascii")
    if len(value) != 40:
        raise AigcError("unauthorized", "the server public key is 40 Z85 characters (or the path of its .key "
                        "file)", "server_public_key")
    return value


def open_client(settings: Settings) -> Client:
    """A connected Client (connecting never waits: a sidecar that is not there shows on the first call)."""
    if settings.mode == LOCAL:
        path = os.path.expanduser(settings.connection_file or DEFAULT_CONNECTION_FILE)
        if not os.path.exists(path):
            raise AigcError("connection_file", f"The sidecar is not running (no connection file at {path})",
                            "connection_file")
        return Client.from_connection_file(path, timeout=settings.timeout_s)
    endpoint = settings.endpoint.strip()
    if not _ENDPOINT.match(endpoint):
        raise AigcError("bad_endpoint", f"{endpoint!r} is not a ZeroMQ endpoint", "endpoint")
    key = _read_text(settings.key_file, "key") if settings.key_file.strip() else None
    client_keys = os.path.expanduser(settings.client_key_file) if settings.client_key_file.strip() else None
    server_key = _server_key(settings.server_public_key)
    if client_keys and not server_key:
        raise AigcError("curve_key", "a client key needs the server's public key too", "server_public_key")
    try:
        return Client(endpoint, key=key, timeout=settings.timeout_s, server_public_key=server_key,
                      client_keys=client_keys)
    except AigcError:
        raise
    except Exception as exc:  # zmq.ZMQError from connect: "Invalid argument", unknown host...
        raise AigcError("bad_endpoint", f"cannot connect to {endpoint!r}: {exc}", "endpoint") from None
