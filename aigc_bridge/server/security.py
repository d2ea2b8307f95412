"""Who may talk to the sidecar: the bind policy, HMAC keys, CurveZMQ keys and the ZAP authenticator, and
the connection file a launcher reads.

Policy: loopback (127.0.0.0/8, ::1, localhost) or ipc:// by default. Any other address is reachable from
other machines, so it needs CurveZMQ (encryption, and a ZAP handler admitting only the client public keys
in ``--authorized-keys``), or the server refuses to start.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import zmq

from ..assets.writers import write_atomic
from ..client import ConnectionInfo, load_secret_key
from ..errors import AigcError

ZAP_DOMAIN = "aigc-bridge"  # the server socket's zap_domain; the authenticator's keys are filed under it
_TCP_RE = re.compile(r"tcp://(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/\[\]]+)):(?P<port>\*|[0-9]{1,5})")


class InsecureBind(AigcError):
    def __init__(self, message: str) -> None:
        super().__init__("insecure_bind", message, "bind")


def is_loopback(endpoint: str) -> bool:
    """True for ipc:// / inproc:// and tcp on a loopback address; False for *, 0.0.0.0, interface and
    host names (they may be reachable from elsewhere)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    match = _TCP_RE.fullmatch(endpoint)
    if match is None:
        return False
    host = match.group("v6") or match.group("host")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(endpoint: str, curve: bool, authorized_keys: Path | None) -> None:
    """Refuse a bind that would expose the server without client authentication."""
    if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
        raise InsecureBind(f"unsupported endpoint {endpoint!r}: use tcp://HOST:PORT or ipc://PATH")
    if is_loopback(endpoint):
        return
    if not curve or authorized_keys is None:
        raise InsecureBind(
            f"refusing to bind {endpoint}: it is not a loopback address, so other machines could connect. "
            "Remote use needs CurveZMQ: make keys with `aigc-bridge keys DIR --name server`, then pass "
            "--curve-key DIR/server.key_secret and --authorized-keys FOLDER (the clients' public .key "
            "files). For local use bind tcp://127.0.0.1:PORT or ipc://PATH.")


def new_hmac_key() -> str:
    """A random HMAC key as text (its UTF-8 bytes sign); 256 bits."""
    return secrets.token_hex(32)


def read_key_file(path: Path) -> str:
    """The HMAC key in ``path`` (text, surrounding whitespace ignored)."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AigcError("key_file", f"cannot read key file {path}: {exc}", "key_file") from None
    if len(key) < 16:
        raise AigcError("key_file", f"the key in {path} is {len(key)} characters; use at least 16 "
                        "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)", "key_file")
    return key


def read_curve_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file made by `aigc-bridge keys`."""
    return load_secret_key(path, "curve_key")


def check_authorized_keys(folder: Path) -> int:
    """The number of client public keys in ``folder``; refuses a folder that admits nobody."""
    from zmq.auth import load_certificates

    if not Path(folder).is_dir():
        raise AigcError("authorized_keys", f"--authorized-keys {folder} is not a folder", "authorized_keys")
    try:
        count = len(load_certificates(os.fspath(folder)))
    except (OSError, ValueError) as exc:
        raise AigcError("authorized_keys", f"cannot read client keys in {folder}: {exc}",
                        "authorized_keys") from None
    if count == 0:
        raise AigcError("authorized_keys", f"{folder} holds no client public keys (*.key): nobody could "
                        "connect", "authorized_keys")
    return count


def start_authenticator(context: zmq.Context, authorized_keys: Path | None):
    """A ZAP handler thread: admits the client keys in ``authorized_keys`` (None: any key, encryption
    only, which check_bind allows on loopback only)."""
    from zmq.auth import CURVE_ALLOW_ANY
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain=ZAP_DOMAIN,  # pyzmq matches the socket's zap_domain exactly
                         location=os.fspath(authorized_keys) if authorized_keys else CURVE_ALLOW_ANY)
    return auth


def make_keypair(folder: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write NAME.key (public: give it to the other side) and NAME.key_secret (mode 0600) into folder."""
    from zmq.auth import create_certificates

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name) or name.startswith("."):
        raise AigcError("invalid_request", "--name must be 1-64 letters, digits, '.', '_' or '-'", "name")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    targets = folder / f"{name}.key", folder / f"{name}.key_secret"
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise AigcError("exists", f"{', '.join(existing)} exists; pass --force to replace it", "name")
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=folder))  # mode 0700: the secret is never exposed
    try:
        public, secret = (Path(p) for p in create_certificates(staging, name))
        secret.chmod(0o600)
        public.chmod(0o644)
        os.replace(public, targets[0])
        os.replace(secret, targets[1])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def write_connection_file(path: Path, info: ConnectionInfo) -> Path:
    """Atomically, mode 0600 (it holds the HMAC key): a launcher never reads a half-written file."""
    return write_atomic(path, info.to_json().encode("utf-8"), mode=0o600)
