"""The sidecar server (`aigc-bridge serve`): a ROUTER socket loop (core), the worker thread that owns the
engine (worker), the queue and de-duplication (jobs), who may connect (security) and latent previews
(preview). The wire format is docs/protocol.md, implemented only by aigc_bridge.protocol.
"""

from .core import Server, ServerConfig
from .jobs import QueueFull
from .security import InsecureBind, check_bind, is_loopback, make_keypair

__all__ = ["InsecureBind", "QueueFull", "Server", "ServerConfig", "check_bind", "is_loopback", "make_keypair"]
