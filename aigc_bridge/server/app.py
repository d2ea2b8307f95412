"""`aigc-bridge serve` as a process: check the bind policy, load the model, bind, write the connection
file, serve until a shutdown message or SIGTERM / SIGINT, exit 0.

The connection file appears only once the server is ready (model loaded, socket bound), and the line
``aigc-bridge sidecar listening on ENDPOINT`` goes to stdout at the same moment: a launcher waits for
either. The file is removed on a clean exit.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from ..client import ConnectionInfo
from .core import Server, ServerConfig
from .security import check_authorized_keys, check_bind, write_connection_file

log = logging.getLogger("aigc_bridge.server")


def launch(config: ServerConfig, model_dir: Path | None = None, provider: str | None = None,
           threads: int | None = None, connection_file: Path | None = None, memory_limit: int | None = None) -> int:
    """Run a sidecar in this process until it is shut down; returns the exit status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s aigc-bridge %(levelname)s %(message)s")
    check_bind(config.bind, config.curve_keys is not None, config.authorized_keys)  # before a slow load
    if config.authorized_keys is not None:
        count = check_authorized_keys(config.authorized_keys)
        log.info("Curve: admitting %d client key(s) from %s", count, config.authorized_keys)
    pipeline = None
    if model_dir is not None:
        from ..engine import Pipeline

        pipeline = Pipeline.load(model_dir, provider=provider, threads=threads, memory_limit=memory_limit)
    server = Server(pipeline, config)
    endpoint = server.bind()
    written = None
    if connection_file is not None:
        key = config.key.decode("utf-8") if isinstance(config.key, bytes) else config.key
        public = server.public_key.decode("ascii") if server.public_key else None
        written = write_connection_file(connection_file, ConnectionInfo(
            endpoint=endpoint, key=key, server_public_key=public, session=server.session, pid=os.getpid()))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop(drain=False))
    model = pipeline.manifest["model_id"] if pipeline is not None else "none"
    log.info("listening on %s (model %s, %s, %s, %s, queue %d)", endpoint, model,
             pipeline.provider if pipeline is not None else "no provider",
             "signed" if config.key else "unsigned", "curve" if config.curve_keys else "no curve",
             config.queue_size)
    print(f"aigc-bridge sidecar listening on {endpoint}", flush=True)
    try:
        server.serve()
    finally:
        if written is not None and _still_ours(written, server.session):
            written.unlink(missing_ok=True)
    return 0


def _still_ours(path: Path, session: str) -> bool:
    """Remove the connection file only if a newer server has not replaced it."""
    try:
        return ConnectionInfo.load(path).session == session
    except Exception:
        return False
