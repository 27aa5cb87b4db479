"""Interactive terminal sessions through the real CLI on a real PTY."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import time
import uuid

import pexpect
import pytest

from proto.ids import new_access_key
from server.storage import Repository
from tests.harness import BIN, Agent, CutProxy, Server, wait_for

PROMPT = r"[$#] "
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (session users)")
pytestmark = root_only


def spawn_session(server: Server, *args: str, size=(24, 80), url: str | None = None,
                  **env: str) -> pexpect.spawn:
    extra = {"TERM": "xterm"}
    if url:
        extra["PORTHOLE_SERVER"] = url
    extra.update(env)
    child = pexpect.spawn(str(BIN / "porthole"), ["session", *args], env=server.env(**extra),
                          timeout=20, dimensions=size, encoding="utf-8",
                          codec_errors="replace")
    return child


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    return child.exitstatus if child.exitstatus is not None else -child.signalstatus


def test_shell_is_porthole_user_follows_resize_and_exits_with_its_status(server, make_agent):
    agent = make_agent()
    child = spawn_session(server, agent.instance_id, size=(30, 100))
    child.expect(PROMPT)
    child.sendline("whoami; stty size; echo TERM=$TERM; tty")
    child.expect("porthole-user")
    child.expect("30 100")
    child.expect("TERM=xterm")
    child.expect("/dev/pts/")
    child.setwinsize(40, 120)
    time.sleep(0.3)
    child.sendline("stty size")
    child.expect("40 120")
    child.sendline("exit 7")
    assert finish(child) == 7


def test_job_control_ctrl_c_ctrl_z_and_arrow_keys(server, make_agent):
    agent = make_agent()
    child = spawn_session(server, agent.instance_id)
    child.expect(PROMPT)
    # Each marker is computed by the shell, so it matches the output, never the echoed line;
    # the keys are sent only once the command runs in the foreground.
    child.sendline("echo run$((1+1))ning; sleep 100")
    child.expect("run2ning")
    time.sleep(0.3)
    child.sendcontrol("c")
    child.expect(PROMPT)
    child.sendline("echo after-$((2+2))")
    child.expect("after-4")
    child.sendline("echo sus$((3+3))pend; sleep 200")
    child.expect("sus6pend")
    time.sleep(0.3)
    child.sendcontrol("z")
    child.expect("Stopped")
    child.sendline("jobs -l")
    child.expect("sleep 200")
    child.sendline("kill -KILL %1; wait; echo rea$((4+4))ped")
    child.expect("rea8ped")
    child.sendline("echo one-$((5+5))")
    child.expect("one-10")
    child.send("\x1b[A")  # up arrow: history recalls the last command
    child.sendline("")
    child.expect(r"echo one-\$\(\(5\+5\)\)")  # the recalled line
    child.expect("one-10")
    child.sendline("exit")
    if child.expect([pexpect.EOF, "There are stopped jobs"], timeout=30) == 1:
        child.sendline("exit")  # bash's second exit leaves whatever job it still tracks
    assert finish(child) == 0


def test_full_screen_programs_vim_and_less(server, make_agent):
    agent = make_agent()
    child = spawn_session(server, agent.instance_id, size=(24, 80))
    child.expect(PROMPT)
    child.sendline("vim -u NONE -N /tmp/porthole-vim-test-$$")
    child.expect(r"porthole-vim-test")
    child.send("ihello from vim\x1b")
    child.send(":wq\r")
    child.expect(PROMPT)
    child.sendline("cat /tmp/porthole-vim-test-$$ && rm /tmp/porthole-vim-test-$$")
    child.expect("hello from vim")
    child.sendline("seq 1 500 | less")
    child.expect(":")
    child.send("G")
    child.expect("500")
    child.send("q")
    child.expect(PROMPT)
    child.sendline("exit 0")
    assert finish(child) == 0


def test_command_mode_and_tilde_dot(server, make_agent):
    agent = make_agent()
    child = spawn_session(server, agent.instance_id, "--command", "echo via-pty; exit 5")
    child.expect("via-pty")
    assert finish(child) == 5

    child = spawn_session(server, agent.instance_id, "--command", "sleep 300")
    time.sleep(1)
    child.send("\r~.")
    child.expect("disconnected by the operator")
    assert finish(child) == 255
    # the remote sleep was ended with the session
    wait_for(lambda: "sleep 300" not in subprocess.run(["ps", "-eo", "args"], text=True,
                                                       capture_output=True).stdout,
             10, "remote sleep ended")


def test_terminal_is_restored_on_exit(server, make_agent):
    agent = make_agent()
    child = pexpect.spawn("/bin/bash", ["--norc", "--noprofile"], env=server.env(PS1="outer$ "),
                          encoding="utf-8", timeout=20)
    child.expect("outer\\$ ")
    child.sendline("stty -g > /tmp/before-$$")
    child.expect("outer\\$ ")
    child.sendline(f"{BIN / 'porthole'} session {agent.instance_id} --command 'exit 3'; "
                   "echo status=$?")
    child.expect("status=3")
    child.sendline("stty -g | cmp - /tmp/before-$$ && echo restored; rm /tmp/before-$$")
    child.expect("restored")
    child.sendline("exit")
    child.expect(pexpect.EOF)


@pytest.fixture
def local_user():
    name = "ph" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    yield name
    subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def test_user_option_and_the_agents_allow_list(server, make_agent, local_user, tmp_path):
    agent = make_agent()
    child = spawn_session(server, agent.instance_id, "--user", local_user, "--command", "id -un")
    child.expect(local_user)
    assert finish(child) == 0
    agent.stop()
    (agent.state_dir / "agent.yaml").write_text("allowed_users: [porthole-user]\n")
    agent.start()
    result = server.cli("session", agent.instance_id, "--user", local_user, "--command", "id",
                        check=False)
    assert result.returncode == 1
    assert "allowed_users does not include" in result.stderr and result.stderr.count("\n") == 1


def _add_user(server: Server, name: str, policies: list[str]) -> dict[str, str]:
    key_id, secret = new_access_key()

    async def add() -> None:
        repo = await Repository.open(f"sqlite+aiosqlite:///{server.data_dir / 'porthole.db'}")
        await repo.create_user(name, policies)
        await repo.create_access_key(name, key_id, secret)
        await repo.close()

    asyncio.run(add())
    return {"PORTHOLE_ACCESS_KEY_ID": key_id, "PORTHOLE_ACCESS_KEY_SECRET": secret}


def test_policy_gates_sessions(server, make_agent):
    agent = make_agent()
    runner = _add_user(server, "runner", ["CommandRunnerAccess"])
    result = server.cli("session", agent.instance_id, "--command", "id", check=False, **runner)
    assert result.returncode == 1
    assert "ecs:StartTerminalSession" in result.stderr
    assert f"instance/{agent.instance_id}" in result.stderr
    ops = _add_user(server, "ops", ["SessionManagerUserAccess"])
    child = spawn_session(server, agent.instance_id, "--command", "echo allowed", **ops)
    child.expect("allowed")
    assert finish(child) == 0


def test_region_gate(server, make_agent):
    agent = make_agent()
    server.cli("settings", "session-manager", "--region", "local", "--disable")
    shown = server.cli_json("settings", "show", "--region", "local")
    assert shown["Settings"][0]["SessionManagerConfig"]["SessionManagerEnabled"] is False
    result = server.cli("session", agent.instance_id, "--command", "id", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "disabled in region local" in result.stderr
    assert "porthole settings session-manager --region local --enable" in result.stderr
    rc, reply = server.run_json(agent.instance_id, "--script", "echo commands-unaffected")
    assert rc == 0
    server.cli("settings", "session-manager", "--region", "local", "--enable")
    child = spawn_session(server, agent.instance_id, "--command", "echo back-on")
    child.expect("back-on")
    assert finish(child) == 0


def test_recording_lists_exports_and_replays(server, make_agent, tmp_path):
    agent = make_agent()
    child = spawn_session(server, agent.instance_id, "--reason", "ticket-42")
    child.expect(PROMPT)
    child.sendline("echo recorded-$((6*7))")
    child.expect("recorded-42")
    child.sendline("exit")
    assert finish(child) == 0
    rows = server.cli_json("sessions", "list")["Sessions"]
    (row,) = rows
    assert row["Reason"] == "ticket-42" and row["Username"] == "porthole-user"
    assert row["Status"] == "Terminated" and row["ExitCode"] == 0 and row["Owner"] == "admin"
    assert server.cli_json("sessions", "list", "--active")["Sessions"] == []
    target = tmp_path / "s.cast"
    server.cli("sessions", "export", row["SessionId"], "--file", str(target))
    lines = target.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    events = [json.loads(line) for line in lines[1:]]
    assert all(isinstance(e[0], float) and e[1] in ("o", "r") for e in events)
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    assert "recorded-42" in "".join(e[2] for e in events if e[1] == "o")
    played = server.cli("sessions", "play", row["SessionId"], "--speed", "50")
    assert "recorded-42" in played.stdout
    audit = subprocess.run(["sqlite3", str(server.data_dir / "porthole.db"),
                            "select action, detail from audit_log"], capture_output=True,
                           text=True)
    if audit.returncode == 0:
        assert "SessionStart" in audit.stdout and "ticket-42" in audit.stdout
        assert "SessionEnd" in audit.stdout


def test_terminate_from_another_terminal(server, make_agent):
    agent = make_agent()
    child = spawn_session(server, agent.instance_id)
    child.expect(PROMPT)
    (row,) = server.cli_json("sessions", "list", "--active")["Sessions"]
    server.cli("sessions", "terminate", row["SessionId"])
    child.expect("session ended: terminated by admin")
    assert finish(child) != 0


@pytest.mark.slow
def test_resume_after_links_are_cut_loses_and_duplicates_nothing(tmp_path):
    server = Server(tmp_path).start()
    proxy = CutProxy(server.port)
    agent = None
    try:
        agent = Agent(server, tmp_path / "agent")
        record = json.loads((agent.state_dir / "agent.json").read_text())
        record["Server"] = proxy.url  # the agent reaches the server through the proxy
        (agent.state_dir / "agent.json").write_text(json.dumps(record))
        agent.start()
        child = spawn_session(server, agent.instance_id, "--command",
                              "for i in $(seq 1 300); do echo line-$i; sleep 0.02; done; "
                              "echo all-done", url=proxy.url)
        child.logfile_read = transcript = io.StringIO()
        child.expect("line-40")
        for _ in range(3):
            assert proxy.cut() >= 2  # the agent's and the operator's connections
            time.sleep(1.0)
        child.expect("all-done", timeout=60)
        assert finish(child) == 0
        numbers = [int(n) for n in re.findall(r"line-(\d+)\r\n", transcript.getvalue())]
        assert numbers == list(range(1, 301)), "lines lost, duplicated or reordered"
        assert proxy.connections >= 6
    finally:
        if agent:
            agent.stop()
        proxy.close()
        server.stop()


def test_piped_stdin_reaches_the_remote_command(server, make_agent, tmp_path):
    agent = make_agent()
    script = tmp_path / "input.txt"
    script.write_text("first line\n")
    with open(script) as stdin:
        result = subprocess.run(
            [str(BIN / "porthole"), "session", agent.instance_id, "--command",
             "read a; echo got:$a; cat >/dev/null; echo eof-seen"],
            stdin=stdin, capture_output=True, text=True, env=server.env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "got:first line" in result.stdout and "eof-seen" in result.stdout


def test_sigterm_to_the_cli_restores_the_terminal_and_ends_the_session(server, make_agent):
    agent = make_agent()
    child = pexpect.spawn("/bin/bash", ["--norc", "--noprofile"], env=server.env(PS1="outer$ "),
                          encoding="utf-8", timeout=20)
    child.expect("outer\\$ ")
    child.sendline("stty -g > /tmp/before-$$")
    child.expect("outer\\$ ")
    child.sendline(f"{BIN / 'porthole'} session {agent.instance_id} --command 'sleep 600'; "
                   "echo status=$?")
    wait_for(lambda: server.cli_json("sessions", "list", "--active")["Sessions"], 20,
             "session open")
    cli_pid = int(subprocess.run(["pgrep", "-f", f"porthole session {agent.instance_id}"],
                                 capture_output=True, text=True).stdout.split()[0])
    os.kill(cli_pid, signal.SIGTERM)
    child.expect("status=255")
    child.sendline("stty -g | cmp - /tmp/before-$$ && echo restored; rm /tmp/before-$$")
    child.expect("restored")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    wait_for(lambda: not server.cli_json("sessions", "list", "--active")["Sessions"], 20,
             "session ended")


@pytest.mark.slow
def test_an_open_session_survives_a_server_restart(server, make_agent):
    agent = make_agent()
    child = spawn_session(server, agent.instance_id)
    child.logfile_read = transcript = io.StringIO()
    child.expect(PROMPT)
    child.sendline("echo before-$((1+1))")
    child.expect("before-2")
    server.stop()
    server.start()
    child.sendline("echo after-$((2+2))")
    child.expect("after-4", timeout=60)
    child.sendline("exit 0")
    assert finish(child) == 0
    assert transcript.getvalue().count("before-2") == 1
