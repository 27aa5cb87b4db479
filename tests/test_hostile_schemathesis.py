"""Schemathesis against the server's own /openapi.json: generated (valid and invalid) requests
to every action, correctly signed, must never get a server error (5xx)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from proto import signing
from tests.harness import Server

pytestmark = pytest.mark.slow
MAX_EXAMPLES = 2  # per operation and mode: bounded, so the run stays under a minute


class SignedAuth(requests.auth.AuthBase):
    """Signs the request exactly as sent (after schemathesis serialised the body)."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id = key_id
        self.secret = secret

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        parts = urlsplit(r.url or "")
        timestamp, nonce = f"{time.time():.3f}", secrets.token_hex(16)
        message = signing.string_to_sign(r.method or "POST", parts.path, parts.query, body,
                                         timestamp, nonce, self.key_id)
        r.headers.update({signing.HEADER_KEY_ID: self.key_id,
                          signing.HEADER_TIMESTAMP: timestamp, signing.HEADER_NONCE: nonce,
                          signing.HEADER_SIGNATURE: signing.sign(self.secret, message)})
        return r


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("schemathesis")).start()
    yield server
    assert "Traceback" not in server.log()
    server.stop()


@pytest.fixture(scope="module")
def signed_session(fuzzed_server: Server) -> Iterator[requests.Session]:
    session = requests.Session()
    session.auth = SignedAuth(fuzzed_server.admin["AccessKeyId"],
                              fuzzed_server.admin["AccessKeySecret"])
    session.verify = str(fuzzed_server.ca_file)
    yield session
    session.close()


def test_no_server_errors(fuzzed_server, signed_session):
    schema = schemathesis.openapi.from_dict(fuzzed_server.get_json("/openapi.json"))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40
    calls: list[int] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            def check(case: Any) -> None:
                response = case.call(base_url=fuzzed_server.url, session=signed_session,
                                     timeout=30, verify=str(fuzzed_server.ca_file))
                calls.append(response.status_code)
                assert response.status_code < 500, (case.operation.label, response.text)
                case.validate_response(response, checks=[not_a_server_error])
                if response.status_code >= 400:
                    assert {"Code", "Message", "RequestId"} <= set(response.json())

            try:
                check()
            except Unsatisfiable:  # no invalid input exists (e.g. an action without params)
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert len(calls) >= len(operations)
    assert 200 in calls and any(400 <= c < 500 for c in calls)
