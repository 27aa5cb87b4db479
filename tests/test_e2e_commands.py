"""RunCommand end to end: real server, real agents, real subprocesses and users."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
import uuid

import pytest

from tests.harness import Agent, Server, alive, wait_for

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, run-as)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server and one agent for the whole module: these tests do not disturb them."""
    srv = Server(tmp_path_factory.mktemp("run")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def shared_agent(server, tmp_path_factory):
    agent = Agent(server, tmp_path_factory.mktemp("agents") / "a0").start()
    yield agent
    agent.stop()


@pytest.fixture
def make_agent(shared_agent):
    return lambda: shared_agent


def test_register_and_see_online(server, make_agent):
    agent = make_agent()
    assert agent.instance_id.startswith("mi-") and len(agent.instance_id) == 20
    row = server.instance(agent.instance_id)
    assert row["AgentStatus"] == "Online"
    assert row["Region"] == "local" and row["OsType"] == "Linux" and row["AgentVersion"]
    assert row["LastHeartbeatTime"] and row["Hostname"]
    key = agent.state_dir / "agent.key"
    assert key.stat().st_mode & 0o777 == 0o600


@root_only
def test_run_as_root_by_default(server, make_agent):
    agent = make_agent()
    rc, reply = server.run_json(agent.instance_id, "--script",
                                'id -u; echo "$HOME $USER $LOGNAME $SHELL"; pwd')
    assert rc == 0, reply
    (result,) = reply["Results"]
    assert result["InvocationStatus"] == "Success" and result["ExitCode"] == 0
    uid, env, cwd = result["Output"].splitlines()
    assert uid == "0"
    home = pwd.getpwnam("root").pw_dir
    assert env.split()[:3] == [home, "root", "root"]
    assert cwd == home


@pytest.fixture
def local_user():
    name = "ph" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    yield name
    subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


@root_only
def test_run_as_a_user_made_with_useradd(server, make_agent, local_user):
    agent = make_agent()
    rc, reply = server.run_json(
        agent.instance_id, "--user", local_user, "--script",
        'id -un; echo "$HOME|$USER|$LOGNAME|$SHELL"; pwd; touch ~/made-by-porthole')
    assert rc == 0, reply
    name, env, cwd = reply["Results"][0]["Output"].splitlines()
    home = f"/home/{local_user}"
    assert name == local_user
    assert env == f"{home}|{local_user}|{local_user}|/bin/bash"
    assert cwd == home
    made = os.stat(f"{home}/made-by-porthole")
    assert made.st_uid == pwd.getpwnam(local_user).pw_uid


def test_unknown_user_and_workdir_are_reported(server, make_agent):
    agent = make_agent()
    rc, reply = server.run_json(agent.instance_id, "--user", "no-such-user-xyz",
                                "--script", "true")
    assert rc == 1
    assert reply["Results"][0]["ErrorCode"] == "UserNotExist"
    rc, reply = server.run_json(agent.instance_id, "--workdir", "/no/such/dir",
                                "--script", "true")
    assert rc == 1 and reply["Results"][0]["ErrorCode"] == "WorkingDirNotExist"


def test_exit_codes_and_stderr_are_captured(server, make_agent):
    agent = make_agent()
    rc, reply = server.run_json(agent.instance_id, "--script", "echo out; echo err >&2; exit 3")
    assert rc == 1
    r = reply["Results"][0]
    assert r["InvocationStatus"] == "Failed" and r["ExitCode"] == 3
    assert r["ErrorCode"] == "ExitCodeNonzero"
    assert r["Output"] == "out\nerr\n"
    assert reply["InvocationStatus"] == "Failed"
    text = server.cli("run", agent.instance_id, "--script", "exit 4", "--output", "text",
                      check=False)
    assert text.returncode == 1 and "exit 4" in text.stdout


def test_timeout_kills_the_whole_process_group(server, make_agent, tmp_path):
    agent = make_agent()
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    rc, reply = server.run_json(
        agent.instance_id, "--timeout", "1", "--script",
        f"sleep 300 & echo $! > {pidfile}; echo started; wait")
    assert rc == 1
    r = reply["Results"][0]
    assert r["InvocationStatus"] == "Timeout" and r["ErrorCode"] == "ExecutionTimeout"
    assert r["Output"] == "started\n"
    assert time.monotonic() - started < 30
    child = int(pidfile.read_text())
    wait_for(lambda: not alive(child), 5, "background child killed")



def test_large_output_is_truncated_with_a_dropped_count(server, make_agent):
    agent = make_agent()
    rc, reply = server.run_json(agent.instance_id, "--script",
                                "head -c 100000 /dev/zero | tr '\\0' x")
    assert rc == 0
    r = reply["Results"][0]
    assert len(r["Output"]) == 24 * 1024
    assert r["Dropped"] == 100000 - 24 * 1024


def test_several_instances_one_offline_exits_nonzero(server, make_agent, tmp_path):
    a = make_agent()
    b = Agent(server, tmp_path / "never-started")  # registered, never online
    rc, reply = server.run_json(a.instance_id, b.instance_id, "--script", "echo hi",
                                "--delivery-timeout", "0")
    assert rc == 1
    by_id = {r["InstanceId"]: r for r in reply["Results"]}
    assert by_id[a.instance_id]["InvocationStatus"] == "Success"
    assert by_id[a.instance_id]["Output"] == "hi\n"
    assert by_id[b.instance_id]["ErrorCode"] == "ClientNotRunning"
    assert reply["InvocationStatus"] == "PartialFailed"


def test_unknown_instance_is_a_one_line_error(server, make_agent):
    result = server.cli("run", "mi-00000000000000000", "--script", "true", check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not registered" in result.stderr
    assert "Traceback" not in result.stderr
