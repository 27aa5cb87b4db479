"""Property-based fuzzing: the policy and trust-policy parsers and the frame decoder turn any
input into a value or their own error type, never anything else."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from proto import ProtocolError
from proto.messages import Heartbeat, Hello, decode, encode
from server.policy import PolicyError, evaluate, parse_policy, parse_trust_policy

KEYS = ["Version", "Statement", "Effect", "Action", "Resource", "Condition", "Principal",
        "RAM", "StringEquals", "IpAddress", "DateLessThan", "Bool", "NumericEquals",
        "ecs:CommandRunAs", "acs:SourceIp", "ecs:tag/env", "NotAction", "x"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.sampled_from(["1", "Allow", "Deny", "*", "ecs:*", "ecs:RunCommand",
                                     "sts:AssumeRole", "10.0.0.0/8", "2026-01-01T00:00:00Z",
                                     "true", "", "acs:ram::1:root"]),
                    st.text(max_size=12))
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=30)


def _shaped() -> st.SearchStrategy:
    statement = st.fixed_dictionaries({"Effect": JSONISH, "Action": JSONISH},
                                      optional={"Resource": JSONISH, "Condition": JSONISH,
                                                "Principal": JSONISH})
    return st.fixed_dictionaries({"Version": st.one_of(st.just("1"), JSONISH),
                                  "Statement": st.one_of(st.lists(statement, max_size=3),
                                                         statement, JSONISH)})


@settings(max_examples=300, deadline=None)
@given(document=st.one_of(JSONISH, _shaped()))
def test_policy_parsers_raise_only_policy_error(document):
    for parse in (parse_policy, parse_trust_policy):
        for form in (document, json.dumps(document, allow_nan=True)):
            try:
                parsed = parse(form)
            except PolicyError as exc:
                assert exc.place and "\n" not in str(exc)
                continue
            if parse is parse_policy:
                evaluate([("fuzz", parsed)], "ecs:RunCommand", "acs:ecs:x:1:instance/mi-1",
                         {"ecs:CommandRunAs": "root", "acs:SourceIp": "10.1.2.3"})


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_policy_parser_on_arbitrary_text(text):
    try:
        parse_policy(text)
    except PolicyError:
        pass


VALID_FRAMES = [encode(Hello([1], "mi-0123456789abcdef0", "1.0", "host", "linux", "os")),
                encode(Heartbeat(7, 1.5))]


@settings(max_examples=400, deadline=None)
@given(frame=st.sampled_from(VALID_FRAMES), data=st.data())
def test_mutated_frames_decode_or_raise_protocol_error(frame, data):
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[at:at + data.draw(st.integers(1, 8))]
        else:
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        decode(bytes(buf))
    except ProtocolError:
        pass
