"""Users, groups, access keys and versioned custom policies through the real CLI and server."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cli.client import ApiError, Client
from cli.config import Profile
from tests.harness import BIN, Server


def admin_client(server: Server) -> Client:
    return Client(Profile(server=server.url, ca_file=str(server.ca_file),
                          access_key_id=server.admin["AccessKeyId"],
                          access_key_secret=server.admin["AccessKeySecret"]))


def key_env(key: dict[str, str]) -> dict[str, str]:
    return {"PORTHOLE_ACCESS_KEY_ID": key["AccessKeyId"],
            "PORTHOLE_ACCESS_KEY_SECRET": key["AccessKeySecret"]}


def make_user(server: Server, name: str, *policies: str) -> dict[str, str]:
    """A RAM user with the given policies attached; returns the CLI environment of its key."""
    server.cli("iam", "user", "create", name)
    for policy in policies:
        server.cli("iam", "policy", "attach", policy, "--user", name)
    return key_env(server.cli_json("iam", "access-key", "create", "--user", name))


def cli_input(server: Server, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "porthole"), *args], input=text, capture_output=True,
                          text=True, env=server.env(), timeout=60)


def write_policy(tmp: Path, name: str, *statements: dict[str, Any]) -> Path:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"Version": "1", "Statement": list(statements)}))
    return path


def denied(result: Any, action: str, resource: str = "") -> None:
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert action in result.stderr and resource in result.stderr, result.stderr


def test_users_groups_and_custom_policies(server, tmp_path):
    alice = make_user(server, "alice")
    users = server.cli_json("iam", "user", "list")["Users"]
    assert [u["UserName"] for u in users] == ["admin", "alice"]
    denied(server.cli("iam", "user", "list", check=False, **alice), "ram:ListUsers",
           "acs:ram::1000000000000000:user/*")

    readers = write_policy(tmp_path, "readers", {"Effect": "Allow",
                                                 "Action": ["ram:List*", "ram:Get*"],
                                                 "Resource": "*"})
    created = server.cli_json("iam", "policy", "create", "ram-readers", "--document",
                              str(readers))
    assert created["Policy"]["DefaultVersion"] == "v1"
    server.cli("iam", "group", "create", "auditors")
    server.cli("iam", "policy", "attach", "ram-readers", "--group", "auditors")
    server.cli("iam", "group", "add-user", "auditors", "alice")
    assert server.cli_json("iam", "group", "show", "auditors")["Group"] == {
        **server.cli_json("iam", "group", "show", "auditors")["Group"],
        "Users": ["alice"], "Policies": ["ram-readers"]}
    listed = server.cli_json("iam", "user", "list", **alice)["Users"]  # through the group
    assert {u["UserName"] for u in listed} == {"admin", "alice"}
    server.cli("iam", "group", "remove-user", "auditors", "alice")
    denied(server.cli("iam", "user", "list", check=False, **alice), "ram:ListUsers")

    # versions: the default version is the one in force
    server.cli("iam", "policy", "attach", "ram-readers", "--user", "alice")
    narrower = write_policy(tmp_path, "narrower", {"Effect": "Allow", "Action": "ram:GetUser",
                                                   "Resource": "*"})
    v2 = server.cli_json("iam", "policy", "update", "ram-readers", "--document", str(narrower))
    assert v2["PolicyVersion"]["VersionId"] == "v2" and v2["PolicyVersion"]["IsDefaultVersion"]
    denied(server.cli("iam", "user", "list", check=False, **alice), "ram:ListUsers")
    server.cli("iam", "user", "show", "alice", **alice)
    server.cli("iam", "policy", "set-default", "ram-readers", "v1")
    server.cli("iam", "user", "list", **alice)
    versions = server.cli_json("iam", "policy", "versions", "ram-readers")["PolicyVersions"]
    assert [(v["VersionId"], v["IsDefaultVersion"]) for v in versions] == [
        ("v1", True), ("v2", False)]
    refused = server.cli("iam", "policy", "delete-version", "ram-readers", "v1", check=False)
    assert refused.returncode == 1 and "default version" in refused.stderr
    server.cli("iam", "policy", "delete-version", "ram-readers", "v2")
    shown = server.cli_json("iam", "policy", "show", "ram-readers")
    assert json.loads(shown["DefaultPolicyVersion"]["PolicyDocument"]) == json.loads(
        readers.read_text())

    attached = server.cli("iam", "policy", "delete", "ram-readers", check=False)
    assert attached.returncode == 1 and "user alice" in attached.stderr
    server.cli("iam", "policy", "detach", "ram-readers", "--user", "alice")
    server.cli("iam", "policy", "detach", "ram-readers", "--group", "auditors")
    server.cli("iam", "policy", "delete", "ram-readers")
    names = {p["PolicyName"]: p["PolicyType"]
             for p in server.cli_json("iam", "policy", "list")["Policies"]}
    assert names == {"AdministratorAccess": "System", "ReadOnlyAccess": "System",
                     "SessionManagerUserAccess": "System", "CommandRunnerAccess": "System"}
    server.cli("iam", "group", "delete", "auditors")
    assert server.cli_json("iam", "group", "list")["Groups"] == []


def test_invalid_policy_documents_are_refused_with_the_place(server, tmp_path):
    cases = [
        ({"Version": "1", "Statement": [{"Effect": "allow", "Action": "ecs:*",
                                         "Resource": "*"}]}, "Statement[0].Effect"),
        ({"Version": "1", "Statement": [{"Effect": "Allow", "Action": ["ecs:RunCommand", 7],
                                         "Resource": "*"}]}, "Statement[0].Action[1]"),
        ({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "ecs:RunCommand",
                                         "Resource": "*", "Condition": {"IpAddress": {
                                             "acs:SourceIp": "not-an-ip"}}}]},
         "Statement[0].Condition.IpAddress.acs:SourceIp"),
        ({"Version": 1, "Statement": []}, "Version"),
    ]
    for i, (document, place) in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(document))
        result = server.cli("iam", "policy", "create", f"bad{i}", "--document", str(path),
                            check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1
        assert place in result.stderr and "MalformedPolicyDocument" in result.stderr
    (tmp_path / "syntax.json").write_text('{"Version": "1",\n "Statement": [}')
    result = server.cli("iam", "policy", "create", "syntax", "--document",
                        str(tmp_path / "syntax.json"), check=False)
    assert "line 2 column" in result.stderr
    missing = server.cli("iam", "policy", "create", "x", "--document", "/nonexistent",
                         check=False)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    assert server.cli_json("iam", "policy", "list", "--type", "Custom")["Policies"] == []


def test_access_keys_limit_disable_rotate_delete(server):
    bob = make_user(server, "bob", "ReadOnlyAccess")
    server.cli("instances", **bob)
    second = server.cli_json("iam", "access-key", "create", "--user", "bob")
    assert set(second) == {"AccessKeyId", "AccessKeySecret"}
    third = server.cli("iam", "access-key", "create", "--user", "bob", check=False)
    assert third.returncode == 1 and "LimitExceeded.AccessKey" in third.stderr
    bob_id = bob["PORTHOLE_ACCESS_KEY_ID"]
    server.cli("iam", "access-key", "disable", bob_id)
    refused = server.cli("instances", check=False, **bob)
    assert refused.returncode == 1 and "InvalidAccessKeyId" in refused.stderr
    server.cli("iam", "access-key", "enable", bob_id)
    server.cli("instances", **bob)
    server.cli("iam", "access-key", "delete", second["AccessKeyId"])
    rotated = server.cli_json("iam", "access-key", "rotate", bob_id)
    server.cli("instances", **key_env(rotated))
    assert server.cli("instances", check=False, **bob).returncode == 1
    keys = server.cli_json("iam", "access-key", "list", "--user", "bob")["AccessKeys"]
    assert {(k["AccessKeyId"], k["Status"]) for k in keys} == {
        (bob_id, "Inactive"), (rotated["AccessKeyId"], "Active")}
    assert all("AccessKeySecret" not in k for k in keys)
    admin_key = server.admin["AccessKeyId"]
    own = server.cli("iam", "access-key", "delete", admin_key, check=False)
    assert own.returncode == 1 and "signed with that key" in own.stderr
    server.cli("iam", "user", "delete", "bob")
    gone = server.cli("instances", check=False, **key_env(rotated))
    assert gone.returncode == 1 and "InvalidAccessKeyId" in gone.stderr
    self_delete = server.cli("iam", "user", "delete", "admin", check=False)
    assert self_delete.returncode == 1 and "signed in as" in self_delete.stderr


def test_names_are_checked_and_secrets_at_rest_are_protected(server):
    result = server.cli("iam", "user", "create", "../../etc/passwd", check=False)
    assert result.returncode == 1 and "InvalidParameter.UserName" in result.stderr
    admin = admin_client(server)
    for bad in ("a/b", "", "x" * 65, ".hidden", "ünï", "a\x00b", "a b"):
        with pytest.raises(ApiError) as err:
            admin.call("CreateUser", UserName=bad)
        assert err.value.code in ("InvalidParameter.UserName", "MissingParameter.UserName")
    for action, params in (("CreateGroup", {"GroupName": "../x"}),
                           ("CreateRole", {"RoleName": "../x", "AssumeRolePolicyDocument": "{}"}),
                           ("CreatePolicy", {"PolicyName": "../x", "PolicyDocument": "{}"})):
        with pytest.raises(ApiError) as err:
            admin.call(action, **params)
        param = next(iter(params))
        assert err.value.code == f"InvalidParameter.{param}"
    carol = make_user(server, "carol")
    result = cli_input(server, "a long enough password\n", "iam", "user", "set-password",
                       "carol", "--password-stdin")
    assert result.returncode == 0, result.stderr
    short = cli_input(server, "short\n", "iam", "user", "set-password", "carol",
                      "--password-stdin")
    assert short.returncode == 1 and "8 to 128" in short.stderr
    assert server.cli_json("iam", "user", "show", "carol")["User"]["LoginProfile"] is True
    db = sqlite3.connect(server.data_dir / "porthole.db")
    try:
        secrets = [r[0] for r in db.execute("SELECT secret FROM access_keys")]
        (password_hash,) = db.execute(
            "SELECT password_hash FROM users WHERE name='carol'").fetchone()
    finally:
        db.close()
    raw = (server.data_dir / "porthole.db").read_bytes()
    for secret in (carol["PORTHOLE_ACCESS_KEY_SECRET"], server.admin["AccessKeySecret"]):
        assert secret.encode() not in raw
        assert all(secret not in s for s in secrets)
    assert all(s.startswith("v1:") for s in secrets)
    assert password_hash.startswith("$argon2id$") and "long enough" not in password_hash
    assert (server.data_dir / "master.key").stat().st_mode & 0o777 == 0o600


def test_instance_tags_feed_policy_conditions(server, make_agent, tmp_path):
    agent = make_agent()
    iid = agent.instance_id
    dev_only = write_policy(tmp_path, "dev-only", {
        "Effect": "Allow", "Action": "ecs:RunCommand", "Resource": "*",
        "Condition": {"StringEquals": {"ecs:tag/env": "dev"}}}, {
        "Effect": "Allow", "Action": "ecs:DescribeInvocation*", "Resource": "*"})
    server.cli("iam", "policy", "create", "dev-only", "--document", str(dev_only))
    dana = make_user(server, "dana", "dev-only")
    denied(server.cli("run", iid, "--script", "true", check=False, **dana), "ecs:RunCommand",
           f"instance/{iid}")
    tags = server.cli_json("instances", "tag", iid, "env=prod", "team=db")["Tags"]
    assert tags == [{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": "db"}]
    denied(server.cli("run", iid, "--script", "true", check=False, **dana), "ecs:RunCommand")
    server.cli("instances", "tag", iid, "env=dev")
    rc, reply = _run_json(server, dana, iid, "echo tagged")
    assert rc == 0 and reply["Results"][0]["Output"] == "tagged\n", reply
    left = server.cli_json("instances", "tag", iid, "--remove", "env")["Tags"]
    assert left == [{"Key": "team", "Value": "db"}]
    denied(server.cli("run", iid, "--script", "true", check=False, **dana), "ecs:RunCommand")
    refused = server.cli("instances", "tag", iid, "env=dev", check=False, **dana)
    assert refused.returncode == 1 and "ecs:TagResources" in refused.stderr


def _run_json(server: Server, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    instance, script = args
    result = server.cli("run", instance, "--script", script, "--output", "json", check=False,
                        **env)
    return result.returncode, json.loads(result.stdout or "{}")
