"""Channel state machines: sequence numbers, cumulative acks, byte credits, replay buffer.

One :class:`Sender` and one :class:`Receiver` per direction of a channel. The sender keeps
every frame until it is acknowledged, so after a broken link it can :meth:`Sender.replay`
from the peer's last ack; the receiver drops duplicates, so replayed frames arrive exactly
once. Credit is in bytes: the receiver grants ``window`` bytes beyond its last ack and only
re-opens it as the application consumes data, so a fast producer stops at its source.
"""

from collections import deque

from proto.errors import ProtocolError
from proto.messages import (
    MAX_CHUNK,
    ChannelAck,
    ChannelClose,
    ChannelData,
    ChannelResume,
    Message,
)

DEFAULT_WINDOW = 256 * 1024


class Sender:
    def __init__(self, channel: int, window: int = DEFAULT_WINDOW) -> None:
        self.channel = channel
        self.window = window  # bytes the peer accepts after frame `acked`
        self.acked = 0  # highest seq the peer acknowledged
        self.next_seq = 1
        self._unacked: deque[ChannelData] = deque()
        self._in_flight = 0  # bytes in self._unacked
        self.eof_sent = False

    def available(self) -> int:
        """How many bytes may be sent now (read at most this much from the source)."""
        return max(0, min(self.window - self._in_flight, MAX_CHUNK))

    def send(self, data: bytes) -> ChannelData:
        """Frame ``data``; it must fit in :meth:`available`."""
        if self.eof_sent:
            raise ValueError("data after end of stream")
        if not data or len(data) > self.available():
            raise ValueError(f"{len(data)} bytes do not fit the credit of {self.available()}")
        frame = ChannelData(self.channel, self.next_seq, bytes(data))
        self.next_seq += 1
        self._unacked.append(frame)
        self._in_flight += len(data)
        return frame

    def send_eof(self) -> ChannelData:
        """End of this direction (a TCP half-close): an empty frame, replayed like data."""
        if self.eof_sent:
            raise ValueError("end of stream sent twice")
        self.eof_sent = True
        frame = ChannelData(self.channel, self.next_seq, b"")
        self.next_seq += 1
        self._unacked.append(frame)
        return frame

    def on_ack(self, ack: ChannelAck) -> None:
        if ack.ack >= self.next_seq or ack.window < 0:
            raise ProtocolError(
                f"channel {self.channel}: ack {ack.ack} for a frame never sent "
                f"(last sent {self.next_seq - 1})",
                code="BadAck",
            )
        if ack.ack < self.acked:
            return  # stale: a newer ack already arrived
        while self._unacked and self._unacked[0].seq <= ack.ack:
            self._in_flight -= len(self._unacked.popleft().data)
        self.acked = max(self.acked, ack.ack)
        self.window = ack.window

    def replay(self, peer_ack: int) -> list[ChannelData]:
        """Frames the peer has not seen, after it reports ``peer_ack`` on reconnect."""
        if peer_ack < self.acked or peer_ack >= self.next_seq:
            raise ProtocolError(
                f"channel {self.channel}: cannot resume from {peer_ack} "
                f"(buffer holds {self.acked + 1}..{self.next_seq - 1})",
                code="ResumeImpossible",
            )
        self.on_ack(ChannelAck(self.channel, peer_ack, self.window))
        return list(self._unacked)

    @property
    def in_flight(self) -> int:
        return self._in_flight


class Receiver:
    def __init__(self, channel: int, window: int = DEFAULT_WINDOW) -> None:
        self.channel = channel
        self.max_window = window
        self.received = 0  # highest in-order seq received
        self._unconsumed = 0  # bytes handed to the application and not yet consumed
        self._granted = window  # credit announced with the last ack
        self._bytes_since_grant = 0
        self.eof = False  # the peer ended its direction (an empty frame)

    def on_data(self, frame: ChannelData) -> bytes:
        """Accept a frame; returns its payload, or b"" for a duplicate from a replay or for
        the end of the stream (then :attr:`eof` is set)."""
        if frame.seq <= self.received:
            return b""
        if self.eof:
            raise ProtocolError(f"channel {self.channel}: data after end of stream",
                                code="DataAfterEof")
        if frame.seq != self.received + 1:
            raise ProtocolError(
                f"channel {self.channel}: frame {frame.seq} arrived, expected "
                f"{self.received + 1}",
                code="SequenceGap",
            )
        if len(frame.data) > MAX_CHUNK or self._bytes_since_grant + len(frame.data) > self._granted:
            raise ProtocolError(
                f"channel {self.channel}: peer sent past its credit of {self._granted} bytes",
                code="CreditExceeded",
            )
        self.received = frame.seq
        if not frame.data:
            self.eof = True
        self._unconsumed += len(frame.data)
        self._bytes_since_grant += len(frame.data)
        return frame.data

    def consumed(self, n: int) -> None:
        """The application has written ``n`` bytes on to their destination."""
        self._unconsumed = max(0, self._unconsumed - n)

    def ack(self) -> ChannelAck:
        """A cumulative ack granting what the application has room for."""
        window = max(0, self.max_window - self._unconsumed)
        self._granted = window
        self._bytes_since_grant = 0
        return ChannelAck(self.channel, self.received, window)

    def should_ack(self) -> bool:
        """True when an ack would give the sender a worthwhile amount of new credit."""
        remaining = self._granted - self._bytes_since_grant
        return self.max_window - self._unconsumed - remaining >= self.max_window // 4


class Endpoint:
    """Both directions of one channel at one end, with resume and a reliable close."""

    def __init__(self, channel: int, send_window: int, receive_window: int) -> None:
        self.channel = channel
        self.sender = Sender(channel, send_window)
        self.receiver = Receiver(channel, receive_window)
        self.close_message: ChannelClose | None = None  # our close, resent on resume

    def close(self, reason: str, exit_code: int | None = None, detail: str = ""
              ) -> ChannelClose:
        self.close_message = ChannelClose(self.channel, reason, exit_code,
                                          self.sender.next_seq - 1, detail)
        return self.close_message

    def resume(self, reply: bool = False) -> ChannelResume:
        ack = self.receiver.ack()
        return ChannelResume(self.channel, ack.ack, ack.window, reply)

    def on_resume(self, message: ChannelResume) -> list[Message]:
        """Frames to send after the peer's resume: our own resume (unless this is the
        answer to ours), the frames it missed, and our close if we already closed."""
        out: list[Message] = [] if message.reply else [self.resume(reply=True)]
        out.extend(self.sender.replay(message.received))
        self.sender.window = message.window
        if self.close_message is not None:
            out.append(self.close_message)
        return out

    def complete(self) -> bool:
        """True once the peer acknowledged every frame we sent."""
        return self.sender.acked == self.sender.next_seq - 1
