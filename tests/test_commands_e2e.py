"""Saved commands, invocations, parameters, run-as, stop, limits, schedules and SendFile, end
to end: one real server and two real agents shared by the tests of this module."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from proto.ids import new_access_key
from server.storage import Repository
from tests.harness import Agent, Server, alive, wait_for

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, run-as)")
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("cmd")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def agents(srv, tmp_path_factory):
    root = tmp_path_factory.mktemp("agents")
    pair = [Agent(srv, root / f"a{i}") for i in range(2)]
    for a in pair:
        a.start(wait_online=False)
    for a in pair:
        wait_for(lambda a=a: srv.online(a.instance_id), 30, "agents online")
    yield pair
    for a in pair:
        a.stop()


@pytest.fixture
def user():
    name = "ph" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    yield name
    subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def results(srv: Server, invoke_id: str, *extra: str) -> dict:
    return srv.cli_json("invocations", "show", invoke_id, *extra)


def settled(srv: Server, invoke_id: str, timeout: float = 30) -> dict:
    return wait_for(lambda: (r := results(srv, invoke_id))["InvocationStatus"] not in (
        "Pending", "Running", "Stopping") and r, timeout, f"{invoke_id} settled")


# --- saved commands and parameters ----------------------------------------------------------


def test_saved_command_lifecycle_and_parameters(srv, agents):
    a = agents[0]
    cid = srv.cli_json("command", "create", "greet", "--content",
                       'echo "{{greeting}}, {{name}}" on {{ACS::InstanceId}}',
                       "--default", "greeting=hello", "--description", "says hello",
                       "--timeout", "30")["CommandId"]
    assert cid.startswith("c-")
    (row,) = srv.cli_json("command", "list", "--name", "gre*")["Commands"]
    assert row["CommandId"] == cid and row["ParameterNames"] == ["greeting", "name"]
    assert row["DefaultParameters"] == {"greeting": "hello"} and row["Timeout"] == 30
    rc, reply = _json(srv.cli("invoke", cid, a.instance_id, "--param", "name=world",
                              "--output", "json", check=False))
    assert rc == 0, reply
    assert reply["Results"][0]["Output"] == f"hello, world on {a.instance_id}\n"
    missing = srv.cli("invoke", cid, a.instance_id, check=False)
    assert missing.returncode == 1 and "no value for parameter name" in missing.stderr
    assert missing.stderr.count("\n") == 1
    unknown = srv.cli("invoke", cid, a.instance_id, "--param", "name=x", "--param", "zz=1",
                      check=False)
    assert unknown.returncode == 1 and "has no parameter zz" in unknown.stderr
    srv.cli("command", "modify", cid, "--content", "echo {{name}}!", "--name", "greet2")
    shown = srv.cli_json("command", "show", cid)
    assert shown["Name"] == "greet2" and shown["CommandContent"] == "echo {{name}}!"
    assert shown["DefaultParameters"] == {} and shown["InvokeTimes"] == 1
    text = srv.cli("command", "show", cid, "--output", "text").stdout
    assert "CommandContent:\necho {{name}}!" in text
    srv.cli("command", "delete", cid)
    gone = srv.cli("invoke", cid, a.instance_id, check=False)
    assert gone.returncode == 1 and "InvalidCommandId.NotFound" in gone.stderr


def _json(result: subprocess.CompletedProcess[str]) -> tuple[int, dict]:
    try:
        return result.returncode, json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"no JSON: {result.stderr}") from None


HOSTILE = ["$(touch /tmp/PWNED)", "`touch /tmp/PWNED`", "x; touch /tmp/PWNED",
           "' \" \\ && || | > < * ?", "two\nlines", "${HOME}", "-e", "%s%n"]


def test_hostile_parameter_values_are_data(srv, agents, tmp_path):
    a = agents[0]
    marker = "/tmp/PWNED"
    if os.path.exists(marker):
        os.unlink(marker)
    script = "printf '%s|' \"{{v}}\"; printf '%s|' {{v}}; echo"
    for value in HOSTILE:
        rc, reply = srv.run_json(a.instance_id, "--script", script, "--param", f"v={value}")
        assert rc == 0, reply
        out = reply["Results"][0]["Output"]
        assert out.startswith(value + "|"), (value, out)
    assert not os.path.exists(marker)
    # without EnableParameter the braces are plain text, not a placeholder
    rc, reply = srv.run_json(a.instance_id, "--script", "echo '{{v}}'")
    assert rc == 0 and reply["Results"][0]["Output"] == "{{v}}\n"


# --- run-as and policy ----------------------------------------------------------------------


@root_only
def test_run_as_user_gets_its_environment(srv, agents, user):
    a = agents[1]
    rc, reply = srv.run_json(a.instance_id, "--user", user, "--script",
                             'id -un; echo "$HOME|$USER|$LOGNAME|$SHELL|$PATH"; pwd')
    assert rc == 0, reply
    name, env, cwd = reply["Results"][0]["Output"].splitlines()
    assert name == user and cwd == f"/home/{user}"
    assert env.startswith(f"/home/{user}|{user}|{user}|/bin/bash|/usr/local/sbin")


@root_only
def test_reference_policy_runas_user01_user02(srv, agents):
    """command-runas-allow-user01-user02.json lets its holder run as user01, not as root."""
    for name in ("user01", "user02"):
        subprocess.run(["useradd", "--create-home", name], capture_output=True)
    document = (REFERENCE / "command-runas-allow-user01-user02.json").read_text()
    key_id, secret = new_access_key()

    async def add_user() -> None:
        repo = await Repository.open(f"sqlite+aiosqlite:///{srv.data_dir / 'porthole.db'}")
        await repo.create_policy("runas-user01-user02", document)
        await repo.create_user("runner01", ["runas-user01-user02", "ReadOnlyAccess"])
        await repo.create_access_key("runner01", key_id, secret)
        await repo.close()

    asyncio.run(add_user())
    env = {"PORTHOLE_ACCESS_KEY_ID": key_id, "PORTHOLE_ACCESS_KEY_SECRET": secret}
    a = agents[0]
    ok = srv.cli("run", a.instance_id, "--user", "user01", "--script", "id -un",
                 "--output", "json", **env)
    assert json.loads(ok.stdout)["Results"][0]["Output"] == "user01\n"
    refused = srv.cli("run", a.instance_id, "--script", "id -un", check=False, **env)
    assert refused.returncode == 1 and "Forbidden.RAM" in refused.stderr
    assert "ecs:RunCommand" in refused.stderr and refused.stderr.count("\n") == 1
    cid = srv.cli_json("command", "create", "who", "--content", "id -un")["CommandId"]
    invoked = srv.cli_json("invoke", cid, a.instance_id, "--user", "user02", **env)
    assert invoked["Results"][0]["Output"] == "user02\n"
    refused = srv.cli("invoke", cid, a.instance_id, "--user", "root", check=False, **env)
    assert refused.returncode == 1 and "ecs:InvokeCommand" in refused.stderr


# --- stop, limits, output -------------------------------------------------------------------



def test_each_instance_end_is_audited_and_the_chain_holds(srv, agents):
    ids = [a.instance_id for a in agents]
    reply = srv.cli_json("run", *ids, "--no-wait", "--script", 'test "$(hostname)" && exit 3')
    invoke_id = reply["InvokeId"]
    settled(srv, invoke_id)

    def ends() -> list[dict]:
        events = srv.cli_json("audit", "list", "--action", "InvocationEnd", "--limit", "500")
        return [e for e in events["Events"] if json.loads(e["Detail"])["InvokeId"] == invoke_id]

    events = wait_for(lambda: len(found := ends()) == 2 and found, 10, "two InvocationEnd")
    assert sorted(e["Resource"].rsplit("/", 1)[1] for e in events) == sorted(ids)
    for event in events:
        assert event["Principal"] == "user/admin" and event["Outcome"] == "Failed"
        assert json.loads(event["Detail"])["ExitCode"] == 3
    starts = srv.cli_json("audit", "list", "--action", "ecs:RunCommand")["Events"]
    assert any(e["Outcome"] == "Allowed" for e in starts)
    assert srv.cli("audit", "verify").returncode == 0


def test_stop_ends_the_whole_tree_on_every_instance(srv, agents, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    script = (f"sleep 300 & echo $! > {pids}/$$.bg; "
              f"setsid sleep 301 & echo $! > {pids}/$$.sid; echo started; wait")
    invoke_id = srv.cli("run", *[a.instance_id for a in agents], "--script", script,
                        "--timeout", "600", "--no-wait", "--output", "text").stdout.strip()
    wait_for(lambda: len(list(pids.iterdir())) == 4, 30, "both scripts started")
    stopped = srv.cli_json("invocations", "stop", invoke_id)
    assert stopped["TasksStopped"] == 2
    reply = settled(srv, invoke_id)
    assert reply["InvocationStatus"] == "Stopped"
    for r in reply["Results"]:
        assert r["InvocationStatus"] == "Terminated" and r["Output"] == "started\n"
    for f in pids.iterdir():
        pid = int(f.read_text())
        wait_for(lambda pid=pid: not alive(pid), 10, f"{f.name} killed")
    again = srv.cli_json("invocations", "stop", invoke_id)
    assert again["TasksStopped"] == 0


def test_max_concurrency_and_max_errors(srv, agents, tmp_path):
    ids = [a.instance_id for a in agents]
    rc, reply = _json(srv.cli("run", *ids, "--script", "sleep 1; date +%s.%N",
                              "--max-concurrency", "1", "--output", "json", check=False))
    assert rc == 0, reply
    first, second = sorted(reply["Results"], key=lambda r: r["DispatchTime"] + r["StartTime"])
    # one at a time: the second was sent only after the first had finished
    assert float(first["Output"]) <= float(second["Output"])
    assert first["FinishTime"] <= second["DispatchTime"]
    rc, reply = _json(srv.cli("run", *ids, "--script", "exit 7", "--max-concurrency", "1",
                              "--max-errors", "0", "--output", "json", check=False))
    assert rc == 1
    statuses = sorted((r["InvocationStatus"], r["ErrorCode"]) for r in reply["Results"])
    assert statuses == [("Cancelled", "MaxErrorsExceeded"), ("Failed", "ExitCodeNonzero")]
    bad = srv.cli("run", *ids, "--script", "true", "--max-errors", "lots", check=False)
    assert bad.returncode == 1 and "MaxErrors" in bad.stderr


def test_full_output_is_kept_and_downloadable(srv, agents, tmp_path):
    a = agents[0]
    size = 300_000
    rc, reply = srv.run_json(a.instance_id, "--script", f"seq 1 1000000 | head -c {size}")
    assert rc == 0
    r = reply["Results"][0]
    assert len(r["Output"]) == 24 * 1024 and r["OutputSize"] == size
    assert r["Dropped"] == size - 24 * 1024
    target = tmp_path / "out.txt"
    srv.cli("invocations", "output", reply["InvokeId"], "--instance", a.instance_id,
            "--file", str(target))
    expected = subprocess.run(f"seq 1 1000000 | head -c {size}", shell=True,
                              capture_output=True).stdout
    assert target.read_bytes() == expected


# --- schedules ------------------------------------------------------------------------------


def test_rate_schedule_runs_repeatedly_until_stopped(srv, agents):
    a = agents[1]
    started = srv.cli_json("run", a.instance_id, "--script", "echo tick",
                           "--repeat", "Period", "--frequency", "rate(1s)")
    invoke_id = started["InvokeId"]
    listed = srv.cli_json("invocations", "list", "--scheduled")["Invocations"]
    row = next(i for i in listed if i["InvokeId"] == invoke_id)
    assert row["RepeatMode"] == "Period" and row["Frequency"] == "rate(1s)"
    assert row["NextRunTime"]
    history = wait_for(lambda: (h := results(srv, invoke_id, "--history"))["Results"]
                       and len([r for r in h["Results"] if r["InvocationStatus"] == "Success"])
                       >= 3 and h, 30, "three runs")
    assert all(r["Output"] == "tick\n" for r in history["Results"]
               if r["InvocationStatus"] == "Success")
    assert results(srv, invoke_id)["InvocationStatus"] in ("Scheduled", "Running")
    srv.cli("invocations", "stop", invoke_id)
    done = settled(srv, invoke_id)
    assert done["InvocationStatus"] == "Stopped"
    runs = len(results(srv, invoke_id, "--history")["Results"])
    listed = srv.cli_json("invocations", "list", "--scheduled")["Invocations"]
    assert invoke_id not in [i["InvokeId"] for i in listed]
    time.sleep(2.5)  # no assertion on time: only that no run starts after the stop
    assert len(results(srv, invoke_id, "--history")["Results"]) == runs


def test_targets_not_registered_are_named_in_one_line(srv, agents, tmp_path):
    a, b = agents
    gone = Agent(srv, tmp_path / "gone")
    srv.cli("instances", "deregister", gone.instance_id)
    before = srv.cli_json("invocations", "list")["TotalCount"]
    ghost = "mi-" + "0" * 17
    for missing in (ghost, gone.instance_id):
        r = srv.cli("run", a.instance_id, missing, b.instance_id, "--script", "true",
                    check=False)
        assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
        assert "InvalidInstance.NotFound" in r.stderr and missing in r.stderr
    bad = srv.cli("run", a.instance_id, "i-not-ours", "--script", "true", check=False)
    assert bad.returncode != 0 and "'i-not-ours' is not an mi-" in bad.stderr, bad.stderr
    assert srv.cli_json("invocations", "list")["TotalCount"] == before  # nothing was sent


def test_bad_schedules_are_refused_in_one_line(srv, agents):
    a = agents[0]
    for args, text in [(("--frequency", "rate(5 minutes)"), "Frequency"),
                       (("--repeat", "Period"), "needs --frequency"),
                       (("--frequency", "61 * * * *"), "invalid cron")]:
        r = srv.cli("run", a.instance_id, "--script", "true", *args, check=False)
        assert r.returncode != 0 and text in r.stderr and r.stderr.count("\n") == 1, r.stderr


# --- SendFile -------------------------------------------------------------------------------


@root_only
def test_send_file_with_owner_group_and_mode(srv, agents, user, tmp_path):
    local = tmp_path / "app.conf"
    local.write_bytes(b"key = value\n\x00binary\xff")
    target = tmp_path / "remote" / "etc"
    ids = [a.instance_id for a in agents]
    reply = srv.cli_json("send-file", ids[0], "--file", str(local), "--target-dir",
                         str(target), "--owner", user, "--group", "daemon", "--mode", "0640")
    assert reply["InvocationStatus"] == "Success", reply
    written = target / "app.conf"
    st = written.stat()
    assert written.read_bytes() == local.read_bytes()
    assert st.st_uid == pwd.getpwnam(user).pw_uid and stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == grp.getgrnam("daemon").gr_gid
    # the same file again without --overwrite: refused, and the file is untouched
    again = srv.cli("send-file", ids[0], "--file", str(local), "--target-dir", str(target),
                    "--name", "app.conf", "--output", "json", check=False)
    assert again.returncode == 1
    assert json.loads(again.stdout)["Results"][0]["ErrorCode"] == "FileAlreadyExists"
    local.write_text("new\n")
    both = srv.cli_json("send-file", *ids, "--file", str(local), "--target-dir", str(target),
                        "--overwrite", "--mode", "600", "--name", "app.conf")
    assert [r["InvocationStatus"] for r in both["Results"]] == ["Success", "Success"]
    assert written.read_text() == "new\n" and stat.S_IMODE(written.stat().st_mode) == 0o600
    nobody = srv.cli("send-file", ids[0], "--file", str(local), "--target-dir", str(target),
                     "--name", "x", "--owner", "no-such-user-q", "--output", "json",
                     check=False)
    assert json.loads(nobody.stdout)["Results"][0]["ErrorCode"] == "UserNotExist"
    big = tmp_path / "big"
    big.write_bytes(b"x" * (33 * 1024))
    too_big = srv.cli("send-file", ids[0], "--file", str(big), "--target-dir", str(target),
                      check=False)
    assert too_big.returncode == 1 and "32 KiB" in too_big.stderr
