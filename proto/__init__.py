"""Porthole wire protocol: message types, codec, handshake and channel state machines.

Sans-I/O: nothing here touches sockets, files or an event loop.
"""

import proto.commands  # noqa: F401  (registers the command message family)
from proto import messages  # noqa: F401  (registers the message types)
from proto.errors import ProtocolError, VersionError

__all__ = ["ProtocolError", "VersionError"]
