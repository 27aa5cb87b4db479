"""One TLS receive buffer per thread instead of one per connection.

asyncio's TLS transport (``asyncio.sslproto.SSLProtocol``) gives every connection a
zero-filled 256 KiB receive buffer, so each idle agent costs about 290 KiB of resident
memory: close to 3 GiB for 10,000 agents. The buffer only carries bytes from the socket's
``recv_into()`` to the connection's incoming memory BIO, and both happen within one
synchronous step of the selector event loop (``get_buffer()``, then ``buffer_updated()``,
which copies the bytes into the BIO at once). So every connection served by one thread's
event loop can share a single buffer; TLS stays end to end and unchanged.

Only for selector event loops: a proactor loop (Windows) fills the buffer asynchronously.
"""

from __future__ import annotations

import sys
import threading
from asyncio import sslproto
from typing import Any

_local = threading.local()
_installed = False


def _thread_buffer(size: int) -> tuple[bytearray, memoryview]:
    pair: tuple[bytearray, memoryview] | None = getattr(_local, "pair", None)
    if pair is None or len(pair[0]) < size:
        buffer = bytearray(size)
        pair = _local.pair = (buffer, memoryview(buffer))
    return pair


def share_tls_read_buffers() -> bool:
    """Make new TLS connections of this process share their thread's receive buffer.
    Returns whether it is in force (not on Windows, nor on an unknown asyncio)."""
    global _installed
    if _installed:
        return True
    protocol: Any = sslproto.SSLProtocol
    if sys.platform == "win32" or not all(
            hasattr(protocol, name) for name in ("get_buffer", "buffer_updated", "max_size")):
        return False
    original_init = protocol.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if hasattr(self, "_ssl_buffer_view"):
            self._ssl_buffer, self._ssl_buffer_view = _thread_buffer(self.max_size)

    protocol.__init__ = __init__
    _installed = True
    return True
