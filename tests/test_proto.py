"""Codec, handshake and channel state machines of proto/."""

import dataclasses
import typing

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import ProtocolError, VersionError
from proto.channel import Receiver, Sender
from proto.handshake import auth_payload, negotiate
from proto.messages import (
    MAX_CHUNK,
    MAX_FRAME_SIZE,
    ChannelAck,
    ChannelData,
    Heartbeat,
    Hello,
    decode,
    encode,
    message_types,
)

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20),
    st.binary(max_size=20),
)


def _strategy(hint: typing.Any) -> st.SearchStrategy:
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return st.recursive(_scalars, lambda c: st.lists(c, max_size=3)
                            | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6)
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of([_strategy(h) for h in typing.get_args(hint)])
    if hint is type(None):
        return st.none()
    if hint is int:
        return st.integers(-(2**63), 2**64 - 1)
    if hint is float:
        return st.floats(allow_nan=False)
    if hint is str:
        return st.text(max_size=50)
    if hint is bytes:
        return st.binary(max_size=300)
    if hint is bool:
        return st.booleans()
    if origin is list:
        return st.lists(_strategy(typing.get_args(hint)[0]), max_size=5)
    if origin is dict:
        k, v = typing.get_args(hint)
        return st.dictionaries(_strategy(k), _strategy(v), max_size=4)
    raise AssertionError(f"no strategy for {hint}")


def _message_strategy(cls: type) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls)})


@pytest.mark.parametrize("cls", message_types(), ids=lambda c: c.TYPE)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_roundtrip_every_message_type(cls, data):
    message = data.draw(_message_strategy(cls))
    assert decode(encode(message)) == message


def test_every_family_is_present():
    names = {c.TYPE for c in message_types()}
    assert {"hello", "challenge", "auth", "welcome", "error", "hb", "hb_ack", "ch_open",
            "ch_accept", "ch_data", "ch_ack", "ch_close", "task_run", "task_result",
            "task_ack"} <= names


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_protocol_error(blob):
    try:
        decode(blob)
    except ProtocolError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "seq", "channel", "data", "ack", "window",
                                         "versions", "instance_id", "nonce", "x"]),
                       st.one_of(_scalars, st.sampled_from([c.TYPE for c in message_types()]),
                                 st.lists(_scalars, max_size=3)), max_size=6))
def test_well_formed_msgpack_with_wrong_shapes_raise_only_protocol_error(frame):
    try:
        decode(msgpack.packb(frame, use_bin_type=True))
    except ProtocolError:
        pass


def test_wrong_field_type_is_refused():
    blob = msgpack.packb({"t": "hb", "seq": "one", "sent_at": 1.0})
    with pytest.raises(ProtocolError, match="seq"):
        decode(blob)
    blob = msgpack.packb({"t": "hb", "seq": True, "sent_at": 1.0})
    with pytest.raises(ProtocolError):
        decode(blob)


def test_missing_field_and_unknown_type_are_refused():
    with pytest.raises(ProtocolError, match="missing field 'seq'"):
        decode(msgpack.packb({"t": "hb", "sent_at": 1.0}))
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(msgpack.packb({"t": "nope"}))


def test_frame_size_limit_on_both_sides():
    big = ChannelData(1, 1, b"x" * MAX_FRAME_SIZE)
    with pytest.raises(ProtocolError) as info:
        encode(big)
    assert info.value.code == "FrameTooLarge"
    with pytest.raises(ProtocolError) as info:
        decode(b"\x80" * (MAX_FRAME_SIZE + 1))
    assert info.value.code == "FrameTooLarge"


def test_version_negotiation_names_both_versions():
    assert negotiate([1, 2], [2, 3]) == 2
    with pytest.raises(VersionError) as info:
        negotiate([1], [2, 3])
    text = str(info.value)
    assert "peer speaks version 2, 3" in text and "this side speaks version 1" in text
    assert info.value.code == "UnsupportedVersion"


def test_auth_payload_binds_instance_and_version():
    nonce = b"n" * 32
    a = auth_payload("mi-0123456789abcdef0", nonce, 1)
    assert a != auth_payload("mi-0123456789abcdef1", nonce, 1)
    assert a != auth_payload("mi-0123456789abcdef0", nonce, 2)
    assert a != auth_payload("mi-0123456789abcdef0", b"m" * 32, 1)


def test_hello_defaults_roundtrip():
    h = Hello(versions=[1], instance_id="mi-0123456789abcdef0", agent_version="0.1")
    assert decode(encode(h)) == h
    assert decode(encode(Heartbeat(1, 2.5))) == Heartbeat(1, 2.5)


# --- channel state machines -----------------------------------------------------------


def _pump(sender: Sender, receiver: Receiver, source: bytearray, sink: bytearray,
          consume: int | None = None) -> None:
    """Move data until the sender is out of credit or the source is empty."""
    while source and sender.available():
        n = sender.available()
        frame = sender.send(bytes(source[:n]))
        del source[:n]
        sink += receiver.on_data(decode(encode(frame)))
    if consume is not None:
        receiver.consumed(consume)


def test_credit_stops_a_fast_producer_and_acks_reopen_it():
    window = 4 * MAX_CHUNK
    s, r = Sender(1, window), Receiver(1, window)
    source, sink = bytearray(b"a" * (20 * MAX_CHUNK)), bytearray()
    _pump(s, r, source, sink)
    assert len(sink) == window and s.available() == 0 and s.in_flight == window
    # nothing consumed: an ack releases the replay buffer but grants no new credit
    s.on_ack(r.ack())
    assert s.available() == 0 and s.in_flight == 0
    assert not r.should_ack()
    r.consumed(window)
    assert r.should_ack()
    s.on_ack(r.ack())
    assert s.available() == MAX_CHUNK
    while source:
        _pump(s, r, source, sink, consume=window)
        s.on_ack(r.ack())
    assert bytes(sink) == b"a" * (20 * MAX_CHUNK)


def test_receiver_refuses_credit_overrun_and_gaps():
    r = Receiver(1, 10)
    with pytest.raises(ProtocolError) as info:
        r.on_data(ChannelData(1, 1, b"x" * 11))
    assert info.value.code == "CreditExceeded"
    r = Receiver(1, 100)
    with pytest.raises(ProtocolError) as info:
        r.on_data(ChannelData(1, 2, b"x"))
    assert info.value.code == "SequenceGap"


def test_sender_refuses_ack_for_unsent_frame():
    s = Sender(1)
    s.send(b"x")
    with pytest.raises(ProtocolError):
        s.on_ack(ChannelAck(1, 5, 100))


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=40),
       cut=st.integers(0, 40), lost=st.integers(0, 40))
def test_resume_after_broken_link_delivers_exactly_once_in_order(chunks, cut, lost):
    """Frames after `cut` are lost with the link; the receiver acked up to some point; on
    resume the sender replays from the receiver's ack and every byte arrives once."""
    s, r = Sender(7, 10_000), Receiver(7, 10_000)
    sink = bytearray()
    frames = [s.send(c) for c in chunks]
    delivered = frames[: min(cut, len(frames))]
    for i, f in enumerate(delivered):
        sink += r.on_data(f)
        r.consumed(len(f.data))
        if i == lost:  # an ack that made it before the link broke
            s.on_ack(r.ack())
    # reconnect: the receiver reports what it has, the sender replays the rest
    for f in s.replay(r.received):
        sink += r.on_data(f)
    # replaying again (e.g. a second reconnect before any ack) duplicates nothing
    for f in s.replay(r.received):
        sink += r.on_data(f)
    assert bytes(sink) == b"".join(chunks)


def test_end_of_stream_is_a_replayable_frame():
    s, r = Sender(3, 1000), Receiver(3, 1000)
    frames = [s.send(b"abc"), s.send_eof()]
    with pytest.raises(ValueError):
        s.send(b"late")
    assert r.on_data(frames[0]) == b"abc" and not r.eof
    assert r.on_data(frames[1]) == b"" and r.eof
    assert [f.seq for f in s.replay(1)] == [2]  # the end of stream is replayed like data
    assert r.on_data(frames[1]) == b""  # duplicate: harmless
    with pytest.raises(ProtocolError) as info:
        r.on_data(ChannelData(3, 3, b"more"))
    assert info.value.code == "DataAfterEof"
