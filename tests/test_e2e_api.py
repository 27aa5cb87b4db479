"""Server set-up, the signed operator API, the OpenAPI document and CLI errors."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
import subprocess
import time

import pytest
from cryptography import x509

from cli.client import Client
from cli.config import Profile
from proto import signing
from proto.ids import new_access_key
from server.storage import Repository
from tests.harness import BIN, Server


def test_init_writes_ca_certificate_and_admin_key(tmp_path):
    srv = Server(tmp_path, regions=("cn-hangzhou", "local"), hostnames=("porthole.example",
                                                                         "10.9.8.7"))
    d = srv.data_dir
    assert (d / "admin.json").stat().st_mode & 0o777 == 0o600
    assert set(srv.admin) == {"AccessKeyId", "AccessKeySecret"}
    for private in ("ca-key.pem", "server-key.pem"):
        assert (d / private).stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert names == {"localhost", "porthole.example"}
    assert ips == {"127.0.0.1", "::1", "10.9.8.7"}
    cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    again = subprocess.run([str(BIN / "porthole-server"), "init", "--data-dir", str(d)],
                           capture_output=True, text=True)
    assert again.returncode != 0 and "already initialised" in again.stderr


def test_run_on_an_uninitialised_dir_says_so_in_one_line(tmp_path):
    result = subprocess.run([str(BIN / "porthole-server"), "run", "--data-dir",
                             str(tmp_path / "nothing")], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1
    assert "not an initialised data directory" in result.stderr and "porthole-server init" in \
        result.stderr


def test_health_and_openapi(server):
    assert server.get_json("/healthz")["Status"] == "ok"
    doc = server.get_json("/openapi.json")
    assert doc["openapi"].startswith("3.")
    run = doc["paths"]["/api/v1/RunCommand"]["post"]
    assert run["x-ram-action"] == "ecs:RunCommand"
    schema = run["requestBody"]["content"]["application/json"]["schema"]
    assert {"InstanceIds", "CommandContent"} <= set(schema["required"])
    for name in ("CreateActivation", "DescribeManagedInstances", "DeregisterManagedInstance",
                 "DescribeInvocationResults"):
        assert f"/api/v1/{name}" in doc["paths"]


def test_server_serves_tls_only(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse().read()


def _client(server, key_id=None, secret=None) -> Client:
    return Client(Profile(server=server.url, ca_file=str(server.ca_file),
                          access_key_id=key_id or server.admin["AccessKeyId"],
                          access_key_secret=secret or server.admin["AccessKeySecret"]))


def _post(client: Client, headers: dict[str, str], body: bytes = b"{}",
          path: str = "/api/v1/DescribeManagedInstances") -> tuple[int, dict]:
    status, data = client.raw("POST", path, body, headers)
    return status, json.loads(data)


def test_replayed_request_is_refused(server):
    c = _client(server)
    body = b"{}"
    headers = c.signed_headers("POST", "/api/v1/DescribeManagedInstances", body)
    assert _post(c, headers, body)[0] == 200
    status, error = _post(c, headers, body)
    assert status == 401 and error["Code"] == "ReplayedRequest"
    assert set(error) == {"Code", "Message", "RequestId"} and error["RequestId"]


def test_stale_tampered_and_unsigned_requests_are_refused(server):
    c = _client(server)
    path = "/api/v1/DescribeManagedInstances"
    stale_ts = f"{time.time() - 16 * 60:.3f}"
    nonce = "n" * 32
    key_id = server.admin["AccessKeyId"]
    stale = {
        signing.HEADER_KEY_ID: key_id, signing.HEADER_TIMESTAMP: stale_ts,
        signing.HEADER_NONCE: nonce,
        signing.HEADER_SIGNATURE: signing.sign(server.admin["AccessKeySecret"], signing
                                               .string_to_sign("POST", path, "", b"{}",
                                                               stale_ts, nonce, key_id)),
    }
    assert _post(c, stale)[1]["Code"] == "RequestExpired"
    headers = c.signed_headers("POST", path, b"{}")
    status, error = _post(c, headers, b'{"Region": "other"}')  # body changed after signing
    assert status == 401 and error["Code"] == "SignatureDoesNotMatch"
    status, error = _post(c, {"Content-Type": "application/json"})
    assert status == 401 and error["Code"] == "MissingAuthentication"
    wrong = _client(server, secret="not-the-secret")
    status, error = _post(wrong, wrong.signed_headers("POST", path, b"{}"))
    assert status == 401 and error["Code"] == "SignatureDoesNotMatch"
    unknown = _client(server, key_id="PHNOSUCHKEY")
    status, error = _post(unknown, unknown.signed_headers("POST", path, b"{}"))
    assert status == 401 and error["Code"] == "InvalidAccessKeyId"


def test_bad_parameters_get_clear_errors(server):
    c = _client(server)
    for params, code in [({"Region": 5}, "InvalidParameter.Region"),
                         ({"Regoin": "x"}, "InvalidParameter")]:
        body = json.dumps(params).encode()
        status, error = _post(c, c.signed_headers("POST", "/api/v1/DescribeManagedInstances",
                                                  body), body)
        assert status == 400 and error["Code"] == code, error
    body = b"[1, 2"
    status, error = _post(c, c.signed_headers("POST", "/api/v1/RunCommand", body), body,
                          "/api/v1/RunCommand")
    assert status == 400 and error["Code"] == "InvalidJSON"
    status, error = _post(c, c.signed_headers("POST", "/api/v1/Nope", b"{}"), b"{}",
                          "/api/v1/Nope")
    assert status == 404 and error["Code"] == "InvalidAction"


def test_every_handler_goes_through_the_policy_engine(tmp_path, make_agent, server):
    """A user holding only the Session Manager policy may not RunCommand: the denial names
    the action and the resource."""
    agent = make_agent()
    key_id, secret = new_access_key()

    async def add_user() -> None:
        repo = await Repository.open(f"sqlite+aiosqlite:///{server.data_dir / 'porthole.db'}")
        await repo.create_user("operator1", ["SessionManagerUserAccess"])
        await repo.create_access_key("operator1", key_id, secret)
        await repo.close()

    asyncio.run(add_user())
    env = {"PORTHOLE_ACCESS_KEY_ID": key_id, "PORTHOLE_ACCESS_KEY_SECRET": secret}
    result = server.cli("run", agent.instance_id, "--script", "id", check=False, **env)
    assert result.returncode == 1
    assert "ecs:RunCommand" in result.stderr
    assert f"instance/{agent.instance_id}" in result.stderr and "Forbidden.RAM" in result.stderr
    listed = server.cli_json("instances", **env)
    assert listed["Instances"] == []  # no ecs:DescribeInstances in that policy
    activation = server.cli("activation", "create", "--region", "local", check=False, **env)
    assert activation.returncode == 1 and "ecs:CreateActivation" in activation.stderr


def test_cli_errors_are_one_line(tmp_path, server):
    env = {**os.environ, "PORTHOLE_CONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)}
    for var in ("PORTHOLE_SERVER", "PORTHOLE_ACCESS_KEY_ID", "PORTHOLE_ACCESS_KEY_SECRET"):
        env.pop(var, None)
    result = subprocess.run([str(BIN / "porthole"), "instances"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "porthole configure" in result.stderr
    down = server.cli("instances", check=False, PORTHOLE_SERVER="https://127.0.0.1:1")
    assert down.returncode == 1 and down.stderr.count("\n") == 1
    assert "cannot reach" in down.stderr and "Traceback" not in down.stderr
    untrusted = server.cli("instances", check=False, PORTHOLE_CA_FILE="")
    assert untrusted.returncode == 1 and "not trusted" in untrusted.stderr


def test_configure_writes_a_private_profile_that_env_overrides(tmp_path, server):
    config = tmp_path / "cfg"
    env = {**os.environ, "PORTHOLE_CONFIG": str(config)}
    for var in ("PORTHOLE_SERVER", "PORTHOLE_CA_FILE", "PORTHOLE_ACCESS_KEY_ID",
                "PORTHOLE_ACCESS_KEY_SECRET", "PORTHOLE_REGION"):
        env.pop(var, None)
    subprocess.run([str(BIN / "porthole"), "configure", "--server", server.url, "--ca-file",
                    str(server.ca_file), "--credentials-file",
                    str(server.data_dir / "admin.json"), "--region", "local"],
                   check=True, env=env, capture_output=True, stdin=subprocess.DEVNULL)
    assert config.stat().st_mode & 0o777 == 0o600
    ok = subprocess.run([str(BIN / "porthole"), "instances", "-o", "json"], env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"Instances": []}
    env["PORTHOLE_SERVER"] = "https://127.0.0.1:1"
    overridden = subprocess.run([str(BIN / "porthole"), "instances"], env=env,
                                capture_output=True, text=True)
    assert overridden.returncode == 1 and "127.0.0.1:1" in overridden.stderr


def test_tls_ca_is_pinned(server):
    ctx = ssl.create_default_context()  # system CAs only: our server must not verify
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/healthz")
