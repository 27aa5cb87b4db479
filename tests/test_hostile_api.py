"""Hostile requests to the operator API: each gets a clear JSON error, and the server keeps
serving an honest operator (checked continuously from another address meanwhile)."""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from proto import signing
from tests.harness import Server

DESCRIBE = "/api/v1/DescribeManagedInstances"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("hostile-api")).start()
    yield server
    server.stop()


class Raw:
    """Hand-made requests from a chosen loopback address."""

    def __init__(self, server: Server, source: str) -> None:
        self.server = server
        self.source = source
        self.ctx = ssl.create_default_context(cafile=str(server.ca_file))

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=self.ctx,
                                           timeout=30, source_address=(self.source, 0))
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data

    def signed(self, path: str = DESCRIBE, body: bytes = b"{}", key_id: str | None = None,
               secret: str | None = None, timestamp: str | None = None,
               nonce: str | None = None, token: str = "", sign_body: bytes | None = None,
               **extra: str) -> dict[str, str]:
        key_id = key_id or self.server.admin["AccessKeyId"]
        secret = secret or self.server.admin["AccessKeySecret"]
        timestamp = timestamp or f"{time.time():.3f}"
        nonce = nonce or secrets.token_hex(16)
        message = signing.string_to_sign("POST", path, "", body if sign_body is None
                                         else sign_body, timestamp, nonce, key_id, token)
        headers = {"Content-Type": "application/json", signing.HEADER_KEY_ID: key_id,
                   signing.HEADER_TIMESTAMP: timestamp, signing.HEADER_NONCE: nonce,
                   signing.HEADER_SIGNATURE: signing.sign(secret, message), **extra}
        if token:
            headers[signing.HEADER_TOKEN] = token
        return headers

    def call(self, path: str = DESCRIBE, body: bytes = b"{}", **kw: Any) -> tuple[int, Any]:
        return self.post(path, body, self.signed(path, body, **kw))


@contextmanager
def bystander(server: Server) -> Iterator[None]:
    """An honest operator calling the API in a loop from 127.0.0.1 the whole time."""
    raw = Raw(server, "127.0.0.1")
    stop = threading.Event()
    results: list[Any] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                results.append(raw.call()[0])
            except OSError as exc:
                results.append(exc)
            stop.wait(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
    results.append(raw.call()[0])
    assert results and all(r == 200 for r in results), results


def _error(status: int, reply: Any, expected_status: int, code: str) -> None:
    assert status == expected_status, (status, reply)
    assert isinstance(reply, dict) and set(reply) == {"Code", "Message", "RequestId"}, reply
    assert reply["Code"] == code, reply
    assert "\n" not in reply["Message"]


def test_forged_replayed_and_expired_signatures(srv):
    raw = Raw(srv, "127.0.0.2")
    with bystander(srv):
        _error(*raw.call(secret="guessed-secret"), 401, "SignatureDoesNotMatch")
        _error(*raw.call(body=b'{"Region": "x"}', sign_body=b"{}"), 401,
               "SignatureDoesNotMatch")
        headers = raw.signed("/api/v1/ListUsers")  # signed for another action
        _error(*raw.post(DESCRIBE, b"{}", headers), 401, "SignatureDoesNotMatch")
        headers = raw.signed()
        headers[signing.HEADER_SIGNATURE] = "zz" * 32
        _error(*raw.post(DESCRIBE, b"{}", headers), 401, "SignatureDoesNotMatch")
        headers = raw.signed()
        headers[signing.HEADER_SIGNATURE] = "é" * 64
        _error(*raw.post(DESCRIBE, b"{}", {k: v.encode("utf-8").decode("latin-1")
                                           for k, v in headers.items()}), 401,
               "SignatureDoesNotMatch")
        headers = raw.signed()
        assert raw.post(DESCRIBE, b"{}", headers)[0] == 200
        _error(*raw.post(DESCRIBE, b"{}", headers), 401, "ReplayedRequest")
        _error(*raw.call(timestamp=f"{time.time() - 3600:.3f}"), 401, "RequestExpired")
        _error(*raw.call(timestamp=f"{time.time() + 3600:.3f}"), 401, "RequestExpired")
        for ts in ("nan", "inf", "-inf", "1e400"):
            _error(*raw.call(timestamp=ts), 401, "RequestExpired")
        _error(*raw.call(timestamp="yesterday"), 401, "InvalidTimestamp")
        _error(*raw.call(nonce="short"), 401, "InvalidNonce")
        _error(*raw.call(key_id="PH" + "A" * 200), 401, "InvalidAccessKeyId")
        _error(*raw.post(DESCRIBE, b"{}", {"Content-Type": "application/json"}), 401,
               "MissingAuthentication")


def test_forged_and_misplaced_security_tokens(srv):
    raw = Raw(srv, "127.0.0.3")
    with bystander(srv):
        _error(*raw.call(key_id="STS.0123456789ABCDEF0123", token="PHT1.e30.AAAA"), 401,
               "InvalidSecurityToken")
        _error(*raw.call(key_id="STS.0123456789ABCDEF0123"), 401, "MissingSecurityToken")
        _error(*raw.call(key_id="STS.0123456789ABCDEF0123", token="x" * 4000), 401,
               "InvalidSecurityToken")
        _error(*raw.call(token="PHT1.e30.AAAA"), 401, "InvalidSecurityToken")


def test_wrong_types_traversal_and_unknown_actions(srv):
    raw = Raw(srv, "127.0.0.4")
    post = raw.call
    with bystander(srv):
        for body, code in [
            ({"PolicyName": "p", "PolicyDocument": {"Version": "1"}},
             "InvalidParameter.PolicyDocument"),
            ({"PolicyName": "p", "PolicyDocument": "[]"}, "MalformedPolicyDocument"),
            ({"PolicyName": "p", "PolicyDocument": "[" * 5000}, "MalformedPolicyDocument"),
            ({"PolicyName": "p", "PolicyDocument": json.dumps(
                {"Version": "1", "Statement": [{"Effect": "Allow", "Action": "ecs:X",
                                                "Resource": "*"}] * 200})},
             "InvalidParameter.PolicyDocument"),
            ({"PolicyName": "p", "PolicyDocument": '{"Version": "1", "Statement": '
              '{"Effect": "Allow", "Effect": "Deny", "Action": "*", "Resource": "*"}}'},
             "MalformedPolicyDocument"),
            ({"PolicyName": ["p"], "PolicyDocument": "{}"}, "InvalidParameter.PolicyName"),
            ({"PolicyName": "../../../etc/passwd", "PolicyDocument": "{}"},
             "InvalidParameter.PolicyName"),
        ]:
            body_bytes = json.dumps(body).encode()
            _error(*post("/api/v1/CreatePolicy", body_bytes), 400, code)
        for path, body, code in [
            ("/api/v1/DeregisterManagedInstance", {"InstanceId": "../../etc/passwd"},
             "InvalidParameter.InstanceId"),
            ("/api/v1/CreateUser", {"UserName": "..\\..\\x"}, "InvalidParameter.UserName"),
            ("/api/v1/TagResources", {"ResourceIds": ["mi-0123456789abcdef0"], "Tags": [1]},
             "InvalidParameter.Tags"),
            ("/api/v1/VerifyAuditLog", {"Anchors": [{"Seq": "1", "Hash": 5}]},
             "InvalidParameter.Anchors.1"),
            ("/api/v1/AssumeRole", {"RoleArn": "acs:ram::1:role/../x",
                                    "RoleSessionName": "s1"}, "InvalidParameter.RoleArn"),
            # values no database column could hold
            ("/api/v1/CreateUser", {"UserName": "nul\u0000byte"}, "InvalidParameter.UserName"),
            ("/api/v1/CreateCommand", {"Name": "c", "Type": "RunShellScript",
                                       "CommandContent": "echo", "WorkingDir": "/" * 1025},
             "InvalidParameter.WorkingDir"),
            ("/api/v1/CreateCommand", {"Name": "c", "Type": "RunShellScript",
                                       "CommandContent": "echo \u0000"},
             "InvalidParameter.CommandContent"),
        ]:
            _error(*post(path, json.dumps(body).encode()), 400, code)
        status, reply = post("/api/v1/..%2F..%2Fetc%2Fpasswd")
        assert status in (401, 404) and reply["Code"] in ("SignatureDoesNotMatch",
                                                          "InvalidAction")
        _error(*post("/api/v1/NoSuchAction"), 404, "InvalidAction")


def test_oversized_and_nested_bodies(srv):
    raw = Raw(srv, "127.0.0.5")
    with bystander(srv):
        big = b'{"Region": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        _error(*raw.post(DESCRIBE, big, raw.signed(body=big)), 413, "RequestTooLarge")
        deep = b"[" * 200_000 + b"]" * 200_000
        _error(*raw.post(DESCRIBE, deep[: 1024 * 1024 - 1], raw.signed(body=deep[:1024 * 1024 -
                                                                                   1])),
               400, "InvalidJSON")
        register = b'{"PublicKey": "' + b"A" * 100_000 + b'"}'
        _error(*raw.post("/agent/v1/register", register, {"Content-Type": "application/json"}),
               413, "RequestTooLarge")


def _until_throttled(attempt: Any, limit: int = 300) -> int:
    """Fail until the server throttles; returns how many failures that took."""
    for n in range(1, limit + 1):
        if attempt(n)[1]["Code"] == "Throttling.Authentication":
            return n
    raise AssertionError(f"no throttling after {limit} failures")


def test_failed_authentication_is_throttled_per_address_and_per_key(srv):
    attacker = Raw(srv, "127.0.0.9")
    with bystander(srv):
        assert attacker.call(secret="wrong")[1]["Code"] == "SignatureDoesNotMatch"
        _until_throttled(lambda _: attacker.call(secret="wrong"))
        probes = []
        for _ in range(10):  # the budget refills slowly: probe right after a refusal
            _until_throttled(lambda _: attacker.call(secret="wrong"))
            probes.append(attacker.call())  # the right secret: refused all the same
        status, reply = next((p for p in probes if p[0] == 429), probes[-1])
        _error(status, reply, 429, "Throttling.Authentication")
        assert "too many failed authentications" in reply["Message"]
        assert "retry in" in reply["Message"]

        sprayer = Raw(srv, "127.0.8.8")  # ever new key ids from one address
        _until_throttled(lambda n: sprayer.call(key_id=f"PHSPRAY{n:013d}"))
        status, reply = sprayer.call(key_id="PHSPRAYFRESH00000000")
        _error(status, reply, 429, "Throttling.Authentication")
        assert "from 127.0.8.8" in reply["Message"]

        victim = "PHNOTAREALKEY0000001"  # one key id tried from ever new addresses
        _until_throttled(lambda n: Raw(srv, f"127.0.{1 + n // 200}.{1 + n % 200}")
                         .call(key_id=victim), 600)
        # The admin key was flooded from 127.0.0.9 too: refused from addresses it never
        # signed in from, still served where its owner works (the bystander's 127.0.0.1).
        _until_throttled(lambda _: Raw(srv, "127.0.9.9").call(secret="wrong"))
        _error(*Raw(srv, "127.0.9.10").call(), 429, "Throttling.Authentication")
        home = Raw(srv, "127.0.0.1")
        assert home.call("/api/v1/CreateUser", b'{"UserName": "other"}')[0] == 200
        status, made = home.call("/api/v1/CreateAccessKey", b'{"UserName": "other"}')
        other = made["AccessKey"]
        status, _ = Raw(srv, "127.0.9.11").call(key_id=other["AccessKeyId"],
                                                secret=other["AccessKeySecret"])
        assert status == 200  # other keys are unaffected


def test_every_hostile_request_is_in_the_audit_log(srv):
    status, reply = Raw(srv, "127.0.0.1").call("/api/v1/LookupAuditEvents",
                                               json.dumps({"Outcome": "Denied",
                                                           "MaxResults": 1000}).encode())
    assert status == 200
    sources = {e["SourceIp"] for e in reply["Events"]}
    assert {"127.0.0.2", "127.0.0.3", "127.0.0.9"} <= sources
    status, verified = Raw(srv, "127.0.0.1").call("/api/v1/VerifyAuditLog")
    assert status == 200 and verified["Valid"], verified


def test_server_log_has_no_tracebacks(srv):
    assert "Traceback" not in srv.log()
    assert Path(srv.log_path).exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_below_1_2_is_refused(srv):
    old = ssl.create_default_context(cafile=str(srv.ca_file))
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", srv.port)) as s:
        old.wrap_socket(s, server_hostname="127.0.0.1")
    modern = ssl.create_default_context(cafile=str(srv.ca_file))
    with socket.create_connection(("127.0.0.1", srv.port)) as s, \
            modern.wrap_socket(s, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
