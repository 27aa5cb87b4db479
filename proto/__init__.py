"""Porthole wire protocol: message types, codec, handshake and channel state machines.

Sans-I/O: nothing here touches sockets, files or an event loop.
"""

from proto import messages  # noqa: F401  (registers the message types)
from proto.errors import ProtocolError, VersionError

__all__ = ["ProtocolError", "VersionError"]
