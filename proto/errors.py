"""The protocol's own error types: the only exceptions the codec and state machines raise."""


class ProtocolError(Exception):
    """A peer broke the protocol (malformed frame, bad sequence number, credit overrun...).

    ``code`` is a stable machine-readable name, also sent to the peer in an Error message.
    """

    def __init__(self, message: str, code: str = "ProtocolError") -> None:
        super().__init__(message)
        self.code = code


class VersionError(ProtocolError):
    """The two peers share no protocol version."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="UnsupportedVersion")
