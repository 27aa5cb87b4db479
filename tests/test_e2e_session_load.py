"""Sessions under load: flow control, many sessions, many agents, timeouts."""

from __future__ import annotations

import os
import select
import subprocess
import time

import pexpect
import pytest

from tests.harness import Agent, Server, wait_for
from tests.test_e2e_sessions import PROMPT, finish, spawn_session

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (session users)")]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _drain(child: pexpect.spawn, budget: int) -> int:
    """Read at most ``budget`` bytes that are ready right now (a deliberately slow reader)."""
    got = 0
    while got < budget and select.select([child.child_fd], [], [], 0)[0]:
        try:
            got += len(os.read(child.child_fd, min(4096, budget - got)))
        except OSError:
            break
    return got


def _expect(child: pexpect.spawn, pattern: str, timeout: float, *logs: Agent | Server) -> None:
    """``child.expect``; a session that ends first fails with its exit status and the logs
    (the quiet end of one session among many says nothing on its own)."""
    try:
        child.expect(pattern, timeout=timeout)
    except pexpect.EOF:
        child.close()
        tails = "\n".join(f"--- {type(x).__name__} log ---\n" + "\n".join(
            x.log().splitlines()[-200:]) for x in logs)
        raise AssertionError(f"the session ended before {pattern!r} (exit status "
                             f"{child.exitstatus}, signal {child.signalstatus}); it printed "
                             f"{child.before!r}\n{tails}") from None


def _flooders() -> str:
    return subprocess.run(["pgrep", "-f", "cat /dev/urandom"], capture_output=True,
                          text=True).stdout


def test_flood_with_a_slow_reader_keeps_memory_flat_and_ctrl_c_works(server, make_agent):
    agent = make_agent()
    child = spawn_session(server, agent.instance_id)
    child.expect(PROMPT)
    child.sendline("cat /dev/urandom | base64")
    time.sleep(1)
    base = {"server": rss_mib(server.proc.pid), "agent": rss_mib(agent.proc.pid)}
    peak = dict(base)
    received = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # ~80 KB/s: far slower than the producer
        received += _drain(child, 4096)
        time.sleep(0.05)
        peak["server"] = max(peak["server"], rss_mib(server.proc.pid))
        peak["agent"] = max(peak["agent"], rss_mib(agent.proc.pid))
    print(f"flood: received {received / 1e6:.1f} MB in 30 s; RSS MiB base {base} peak {peak}")
    assert received > 100_000, "the flood did not flow at all"
    for name in ("server", "agent"):
        assert peak[name] - base[name] < 50, f"{name} grew {peak[name] - base[name]:.0f} MiB"
    assert _flooders(), "the flood should still be running while the reader is slow"
    child.sendcontrol("c")
    stopped = time.monotonic()
    while _flooders() and time.monotonic() - stopped < 10:
        _drain(child, 1 << 20)
        time.sleep(0.02)
    print(f"flood: stopped {time.monotonic() - stopped:.2f} s after Ctrl-C")
    assert not _flooders()
    child.expect(PROMPT, timeout=30)
    child.sendline("exit 0")
    assert finish(child) == 0


def test_fifty_sessions_to_one_agent_and_a_flood_does_not_stall_echo(server, make_agent):
    agent = make_agent()
    flood = spawn_session(server, agent.instance_id, "--command", "cat /dev/urandom | base64")
    children = []
    for i in range(50):
        children.append(spawn_session(server, agent.instance_id, "--command",
                                      f"echo ready-{i}; read x; echo got-$x-{i}"))
    for i, child in enumerate(children):
        _drain(flood, 1 << 20)
        _expect(child, f"ready-{i}", 60, agent, server)
    assert len(server.cli_json("sessions", "list", "--active")["Sessions"]) == 51
    for i, child in enumerate(children):
        child.sendline(f"k{i}")
        started = time.monotonic()
        _expect(child, f"got-k{i}-{i}", 10, agent, server)
        assert time.monotonic() - started < 10
        _drain(flood, 1 << 20)
    for child in children:
        assert finish(child) == 0
    flood.sendcontrol("c")
    assert finish(flood) != 0


def test_sessions_to_twenty_agents_at_once(server, tmp_path):
    activation = server.activation(count=20)
    agents = [Agent(server, tmp_path / f"a{i}", activation).start(wait_online=False)
              for i in range(20)]
    try:
        for a in agents:
            wait_for(lambda a=a: server.online(a.instance_id), 60, f"{a.instance_id} online")
        children = [spawn_session(server, a.instance_id, "--command",
                                  f"read x; echo $x-{a.instance_id}") for a in agents]
        time.sleep(2)
        for a, child in zip(agents, children, strict=True):
            child.sendline("hello")
            child.expect(f"hello-{a.instance_id}", timeout=30)
        for child in children:
            assert finish(child) == 0
    finally:
        for a in agents:
            a.stop()


def test_idle_timeout_and_maximum_duration_end_sessions_with_a_message(tmp_path):
    server = Server(tmp_path, regions=("idle-region", "long-region")).start()
    agents = []
    try:
        for region in ("idle-region", "long-region"):
            act = server.activation(region=region)
            agents.append(Agent(server, tmp_path / region, act, region=region).start())
        server.cli("settings", "session-manager", "--region", "idle-region", "--idle-timeout",
                   "1")
        server.cli("settings", "session-manager", "--region", "long-region",
                   "--max-duration", "1")
        idle = spawn_session(server, agents[0].instance_id)
        busy = spawn_session(server, agents[1].instance_id)
        idle.expect(PROMPT)
        busy.expect(PROMPT)
        started = time.monotonic()
        while time.monotonic() - started < 90 and busy.isalive():
            busy.sendline("true")  # keeps it from idling: only the duration limit applies
            try:
                busy.expect("session ended: the maximum session duration of 1 min in region "
                            "long-region was reached", timeout=10)
                break
            except pexpect.TIMEOUT:
                continue
        assert time.monotonic() - started < 90
        idle.expect("idle for 1 min", timeout=30)
        assert finish(idle) != 0
        assert finish(busy) != 0
    finally:
        for a in agents:
            a.stop()
        server.stop()
