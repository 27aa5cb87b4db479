"""Message types and the msgpack codec.

Every frame is one msgpack map: ``{"t": <type name>, <field>: <value>, ...}``. Decoding checks
the frame size, the type name and the type of every field, so whatever a peer sends either
becomes a well-formed message or raises :class:`ProtocolError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from proto.errors import ProtocolError

PROTOCOL_VERSIONS: tuple[int, ...] = (1,)
MAX_FRAME_SIZE = 256 * 1024
"""Hard upper bound of one encoded frame, checked before and after decoding."""
MAX_CHUNK = 32 * 1024
"""Largest payload of one ChannelData frame."""

_REGISTRY: dict[str, type[Message]] = {}


class Message:
    TYPE: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.TYPE] = cls


# --- agent hello / auth ------------------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    """Agent -> server: who I claim to be and which protocol versions I speak."""

    TYPE: ClassVar[str] = "hello"
    versions: list[int]
    instance_id: str
    agent_version: str
    hostname: str = ""
    platform: str = ""
    os_name: str = ""


@dataclass(frozen=True)
class Challenge(Message):
    """Server -> agent: the chosen version and a nonce the agent must sign."""

    TYPE: ClassVar[str] = "challenge"
    version: int
    nonce: bytes


@dataclass(frozen=True)
class Auth(Message):
    """Agent -> server: Ed25519 signature over :func:`proto.handshake.auth_payload`."""

    TYPE: ClassVar[str] = "auth"
    signature: bytes


@dataclass(frozen=True)
class Welcome(Message):
    """Server -> agent: authenticated; how often to send heartbeats."""

    TYPE: ClassVar[str] = "welcome"
    heartbeat_interval: float
    server_time: float


@dataclass(frozen=True)
class Error(Message):
    """Either direction: a fatal error; the sender closes the connection after it."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


# --- heartbeat ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat(Message):
    TYPE: ClassVar[str] = "hb"
    seq: int
    sent_at: float


@dataclass(frozen=True)
class HeartbeatAck(Message):
    TYPE: ClassVar[str] = "hb_ack"
    seq: int


# --- channels ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelOpen(Message):
    """Open channel ``channel`` of ``kind`` (shell, port, file...); ``window`` is the
    opener's initial receive credit in bytes."""

    TYPE: ClassVar[str] = "ch_open"
    channel: int
    kind: str
    window: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChannelAccept(Message):
    TYPE: ClassVar[str] = "ch_accept"
    channel: int
    window: int


@dataclass(frozen=True)
class ChannelData(Message):
    """Payload ``seq`` (1, 2, 3...) of a channel; at most MAX_CHUNK bytes."""

    TYPE: ClassVar[str] = "ch_data"
    channel: int
    seq: int
    data: bytes


@dataclass(frozen=True)
class ChannelAck(Message):
    """Cumulative ack: every frame up to ``ack`` arrived. The sender may have at most
    ``window`` bytes in flight after it."""

    TYPE: ClassVar[str] = "ch_ack"
    channel: int
    ack: int
    window: int


@dataclass(frozen=True)
class ChannelClose(Message):
    """End of a channel. ``last_seq`` is the sender's final data frame: the receiver has
    everything once it has received that far (a replay may still be on its way)."""

    TYPE: ClassVar[str] = "ch_close"
    channel: int
    reason: str = ""
    exit_code: int | None = None
    last_seq: int = 0
    detail: str = ""  # a kind's own result, e.g. a file transfer's checksum as JSON


@dataclass(frozen=True)
class ChannelResume(Message):
    """After a link came back: I have received up to ``received``; replay the rest and you
    may send ``window`` bytes after it. ``reply`` is set on the answer to a resume, which
    is never answered again."""

    TYPE: ClassVar[str] = "ch_resume"
    channel: int
    received: int
    window: int
    reply: bool = False


# --- terminal ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TerminalResize(Message):
    TYPE: ClassVar[str] = "term_resize"
    channel: int
    cols: int
    rows: int


def message_types() -> tuple[type[Message], ...]:
    """Every registered message type (each message module registers its own on import)."""
    return tuple(_REGISTRY.values())


# --- codec -------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """Encode a message; raises ProtocolError if the frame would exceed MAX_FRAME_SIZE."""
    frame = {"t": message.TYPE}
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        frame[f.name] = getattr(message, f.name)
    data = msgpack.packb(frame, use_bin_type=True)
    if len(data) > MAX_FRAME_SIZE:
        raise ProtocolError(
            f"{message.TYPE} frame of {len(data)} bytes exceeds the {MAX_FRAME_SIZE} byte limit",
            code="FrameTooLarge",
        )
    return data


def decode(data: bytes) -> Message:
    """Decode one frame. Raises ProtocolError, and nothing else, on any malformed input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("frame must be binary", code="MalformedFrame")
    if len(data) > MAX_FRAME_SIZE:
        raise ProtocolError(
            f"frame of {len(data)} bytes exceeds the {MAX_FRAME_SIZE} byte limit",
            code="FrameTooLarge",
        )
    try:
        frame = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, timestamp=0)
    except Exception as exc:  # msgpack raises many types; all mean "malformed"
        raise ProtocolError(f"malformed frame: {exc}", code="MalformedFrame") from None
    if not isinstance(frame, dict):
        raise ProtocolError("frame is not a map", code="MalformedFrame")
    kind = frame.get("t")
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}", code="MalformedFrame")
    kwargs: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in frame:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{cls.TYPE}: missing field {f.name!r}", code="MalformedFrame")
            continue
        value = frame[f.name]
        if not _conforms(value, hints[f.name]):
            raise ProtocolError(
                f"{cls.TYPE}: field {f.name!r} has the wrong type", code="MalformedFrame"
            )
        kwargs[f.name] = value
    return cls(**kwargs)


_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS_CACHE:
        _HINTS_CACHE[cls] = typing.get_type_hints(cls)
    return _HINTS_CACHE[cls]


def _conforms(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64
    if hint is float:
        return isinstance(value, float | int) and not isinstance(value, bool)
    if hint in (str, bytes, bool):
        return type(value) is hint
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_conforms(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _conforms(k, key) and _conforms(v, item) for k, v in value.items()
        )
    return False
