"""Roles and temporary credentials: AssumeRole, security tokens, CLI profiles with role_arn."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

from cli.client import ApiError, Client
from cli.config import Profile
from server.auth import issue_temporary_credentials
from server.secrets import Keyring
from server.storage import Repository
from tests.harness import BIN, Server
from tests.test_iam_e2e import make_user, write_policy

ACCOUNT = "1000000000000000"
ROLE_ARN = f"acs:ram::{ACCOUNT}:role/ops"


def _setup_role(server: Server, tmp_path) -> tuple[dict[str, str], dict[str, str]]:
    """Role ops (ReadOnlyAccess) trusted by alice; mallory may call AssumeRole but is not
    trusted. Returns both users' environments."""
    server.cli("iam", "role", "create", "ops", "--trust-user", "alice",
               "--max-session-duration", "3600")
    server.cli("iam", "policy", "attach", "ReadOnlyAccess", "--role", "ops")
    assume = write_policy(tmp_path, "assume", {"Effect": "Allow", "Action": "sts:AssumeRole",
                                               "Resource": ROLE_ARN})
    server.cli("iam", "policy", "create", "assume-ops", "--document", str(assume))
    return make_user(server, "alice", "assume-ops"), make_user(server, "mallory", "assume-ops")


def _temp_env(creds: dict[str, str]) -> dict[str, str]:
    return {"PORTHOLE_ACCESS_KEY_ID": creds["AccessKeyId"],
            "PORTHOLE_ACCESS_KEY_SECRET": creds["AccessKeySecret"],
            "PORTHOLE_SECURITY_TOKEN": creds["SecurityToken"]}


def test_assume_role_gives_expiring_credentials_with_the_roles_policies(server, tmp_path):
    alice, mallory = _setup_role(server, tmp_path)
    creds = server.cli_json("iam", "assume-role", ROLE_ARN, "--session-name", "alice-1",
                            "--duration", "900", **alice)
    assert set(creds) == {"AccessKeyId", "AccessKeySecret", "SecurityToken", "Expiration"}
    temp = _temp_env(creds)
    me = server.cli_json("iam", "whoami", **temp)
    assert me["Arn"] == f"acs:ram::{ACCOUNT}:assumed-role/ops/alice-1"
    assert me["Expiration"] == creds["Expiration"]
    server.cli("iam", "user", "list", **temp)  # ReadOnlyAccess of the role
    refused = server.cli("iam", "user", "create", "eve", check=False, **temp)
    assert refused.returncode == 1 and "assumed-role/ops/alice-1" in refused.stderr
    assert "ram:CreateUser" in refused.stderr

    untrusted = server.cli("iam", "assume-role", ROLE_ARN, check=False, **mallory)
    assert untrusted.returncode == 1 and "trust policy" in untrusted.stderr
    too_long = server.cli("iam", "assume-role", ROLE_ARN, "--duration", "7200", check=False,
                          **alice)
    assert too_long.returncode == 1 and "MaxSessionDuration" in too_long.stderr
    chained = server.cli("iam", "assume-role", ROLE_ARN, check=False, **temp)
    assert chained.returncode == 1 and "sts:AssumeRole" in chained.stderr

    def whoami(key_id: str, secret: str, token: str) -> str:
        """The error code of GetCallerIdentity with these credentials ('' if it worked)."""
        client = Client(Profile(server=server.url, ca_file=str(server.ca_file),
                                access_key_id=key_id, access_key_secret=secret,
                                security_token=token))
        try:
            client.call("GetCallerIdentity")
            return ""
        except ApiError as exc:
            assert exc.status == 401 and "\n" not in exc.message
            return exc.code
        finally:
            client.close()

    key_id, secret, token = creds["AccessKeyId"], creds["AccessKeySecret"], \
        creds["SecurityToken"]
    assert whoami(key_id, secret, token) == ""
    tampered = token[:-3] + ("abc" if not token.endswith("abc") else "xyz")
    assert whoami(key_id, secret, tampered) == "InvalidSecurityToken"
    assert whoami(key_id, secret, "") == "MissingSecurityToken"
    other = server.cli_json("iam", "assume-role", ROLE_ARN, **alice)
    assert whoami(key_id, secret, other["SecurityToken"]) == "InvalidSecurityToken"
    assert whoami(other["AccessKeyId"], secret, other["SecurityToken"]) == \
        "SignatureDoesNotMatch"
    assert whoami(server.admin["AccessKeyId"], server.admin["AccessKeySecret"],
                  token) == "InvalidSecurityToken"

    # A token past its expiry (made as the server would have made it an hour ago):
    async def expired() -> dict[str, str]:
        repo = await Repository.open(f"sqlite+aiosqlite:///{server.data_dir / 'porthole.db'}")
        role = await repo.role("ops")
        await repo.close()
        return issue_temporary_credentials(Keyring.load(server.data_dir / "master.key"), role,
                                           "old", "x", -60)

    old = asyncio.run(expired())
    result = server.cli("iam", "whoami", check=False, **_temp_env(old))
    assert result.returncode == 1 and "SecurityTokenExpired" in result.stderr
    assert result.stderr.count("\n") == 1

    server.cli("iam", "role", "delete", "ops")
    revoked = server.cli("iam", "whoami", check=False, **temp)
    assert revoked.returncode == 1 and "no longer exists" in revoked.stderr


def test_profile_with_role_arn_assumes_and_renews(server, tmp_path):
    alice, _ = _setup_role(server, tmp_path)
    config = tmp_path / "porthole-config"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTHOLE_")}
    env["PORTHOLE_CONFIG"] = str(config)

    def porthole(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "porthole"), *args], env=env, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)

    made = porthole("--profile", "alice", "configure", "--server", server.url, "--ca-file",
                    str(server.ca_file), "--access-key-id", alice["PORTHOLE_ACCESS_KEY_ID"],
                    "--access-key-secret", alice["PORTHOLE_ACCESS_KEY_SECRET"],
                    "--region", "local")
    assert made.returncode == 0, made.stderr
    made = porthole("--profile", "alice", "iam", "configure-role", "ops", "--role-arn",
                    ROLE_ARN, "--session-name", "alice-cli", "--duration", "900")
    assert made.returncode == 0, made.stderr
    first = porthole("--profile", "ops", "iam", "whoami", "-o", "json")
    assert first.returncode == 0, first.stderr
    identity = json.loads(first.stdout)
    assert identity["Arn"] == f"acs:ram::{ACCOUNT}:assumed-role/ops/alice-cli"
    (cache,) = (config.parent / "cache").glob("role-*.json")
    assert cache.stat().st_mode & 0o777 == 0o600
    again = json.loads(porthole("--profile", "ops", "iam", "whoami", "-o", "json").stdout)
    assert again["AccessKeyId"] == identity["AccessKeyId"]  # cached, still fresh

    # The cached credentials are about to expire: the next command renews them first.
    cached = json.loads(cache.read_text())
    cache.write_text(json.dumps({**cached, "ExpiresAt": cached["ExpiresAt"] - 880}))
    renewed = json.loads(porthole("--profile", "ops", "iam", "whoami", "-o", "json").stdout)
    assert renewed["AccessKeyId"] != identity["AccessKeyId"]
    assert json.loads(cache.read_text())["AccessKeyId"] == renewed["AccessKeyId"]
    users = porthole("--profile", "ops", "iam", "user", "list", "-o", "json")
    assert users.returncode == 0 and "mallory" in users.stdout
    alice_self = porthole("--profile", "alice", "iam", "user", "list")
    assert alice_self.returncode == 1 and "ram:ListUsers" in alice_self.stderr
