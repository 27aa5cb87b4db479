"""Each policy file of the shared reference set, loaded unchanged with `porthole iam policy
create`, behaves end to end (real CLI, server and agent) exactly as the reference README says."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.client import ApiError
from tests.harness import Agent, Server
from tests.test_iam_e2e import admin_client, denied, make_user

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, run-as)"),
    pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared/reference is not beside the repo"),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """One server and one agent for the three files (each gets its own RAM user)."""
    root = tmp_path_factory.mktemp("reference")
    server = Server(root).start()
    agent = Agent(server, root / "agent").start()
    yield server, agent.instance_id
    agent.stop()
    server.stop()


@pytest.fixture(scope="module")
def run_as_users() -> Iterator[None]:
    made = []
    for name in ("user01", "user02"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
            made.append(name)
    yield
    for name in made:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def _user_with_reference(server, name: str, file: str) -> dict[str, str]:
    server.cli("iam", "policy", "create", name, "--document", str(REFERENCE / file))
    shown = server.cli_json("iam", "policy", "show", name)
    assert json.loads(shown["DefaultPolicyVersion"]["PolicyDocument"]) == json.loads(
        (REFERENCE / file).read_text())  # stored unchanged
    return make_user(server, f"{name}-user", name)


def _started(server, env: dict[str, str], iid: str, *args: str) -> str:
    """RunCommand without waiting (these policies grant no Describe* right); returns the
    InvokeId."""
    result = server.cli("run", iid, "--script", "id -un", *args, "--no-wait", "-o", "json",
                        check=False, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["InvokeId"]


def _ran_as(server, invoke_id: str) -> str:
    reply = server.cli_json("invocations", "wait", invoke_id, "--max-wait", "60")
    (result,) = reply["Results"]
    assert result["ExitCode"] == 0, result
    return result["Output"].strip()


def test_session_manager_user(fleet):
    server, iid = fleet
    env = _user_with_reference(server, "session-manager-user", "session-manager-user.json")
    session = server.cli("session", iid, "--command", "echo in-a-session", check=False, **env)
    assert session.returncode == 0 and "in-a-session" in session.stdout, session.stderr
    # reads Session Manager settings and Cloud Assistant status (console API)
    user = admin_client(server)
    user.profile.access_key_id = env["PORTHOLE_ACCESS_KEY_ID"]
    user.profile.access_key_secret = env["PORTHOLE_ACCESS_KEY_SECRET"]
    status = user.call("DescribeUserBusinessBehavior", RegionId="local")
    assert status["StatusValue"] == "enabled"
    # switches Session Manager off and on
    server.cli("settings", "session-manager", "--region", "local", "--disable", **env)
    off = server.cli("session", iid, "--command", "true", check=False, **env)
    assert off.returncode == 1 and "disabled in region local" in off.stderr
    server.cli("settings", "session-manager", "--region", "local", "--enable", **env)
    # and nothing else
    denied(server.cli("run", iid, "--script", "id", check=False, **env), "ecs:RunCommand",
           f"instance/{iid}")
    denied(server.cli("run", iid, "--script", "id", "--user", "user01", check=False, **env),
           "ecs:RunCommand")
    denied(server.cli("iam", "user", "list", check=False, **env), "ram:ListUsers")
    denied(server.cli("instances", "deregister", iid, check=False, **env),
           "ecs:DeregisterManagedInstance")
    with pytest.raises(ApiError) as err:
        user.call("ModifyUserBusinessBehavior", RegionId="local", statusValue="disabled")
    assert err.value.code == "Forbidden.RAM"


def test_command_runas_allow_user01_user02(fleet, run_as_users):
    server, iid = fleet
    env = _user_with_reference(server, "runas-user01-user02",
                               "command-runas-allow-user01-user02.json")
    for user in ("user01", "user02"):
        assert _ran_as(server, _started(server, env, iid, "--user", user)) == user
    denied(server.cli("run", iid, "--script", "id", check=False, **env), "ecs:RunCommand",
           f"instance/{iid}")  # no user: root
    for user in ("root", "ROOT", "user03", "User01"):
        denied(server.cli("run", iid, "--script", "id", "--user", user, check=False, **env),
               "ecs:RunCommand")
    command_id = server.cli_json("command", "create", "whoami-cmd", "--content",
                                 "id -un")["CommandId"]
    invoked = server.cli("invoke", command_id, iid, "--user", "user02", "--no-wait", "-o",
                         "json", check=False, **env)
    assert invoked.returncode == 0, invoked.stderr
    assert _ran_as(server, json.loads(invoked.stdout)["InvokeId"]) == "user02"
    denied(server.cli("invoke", command_id, iid, "--no-wait", check=False, **env),
           "ecs:InvokeCommand")
    denied(server.cli("session", iid, "--user", "user01", "--command", "id", check=False,
                      **env), "ecs:StartTerminalSession")


def test_command_runas_deny_root_system(fleet, run_as_users):
    server, iid = fleet
    env = _user_with_reference(server, "runas-not-root", "command-runas-deny-root-system.json")
    assert _ran_as(server, _started(server, env, iid, "--user", "user01")) == "user01"
    denied(server.cli("run", iid, "--script", "id", check=False, **env), "ecs:RunCommand")
    for user in ("root", "ROOT", "Root", "system", "SYSTEM"):
        denied(server.cli("run", iid, "--script", "id", "--user", user, check=False, **env),
               "ecs:RunCommand")
    denied(server.cli("session", iid, "--command", "id", check=False, **env),
           "ecs:StartTerminalSession")
