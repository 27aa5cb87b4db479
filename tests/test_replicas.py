"""Several server replicas on one database and NATS: an operator on one replica reaches an
agent held by another, and the death of a replica loses neither sessions nor results."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import time
import uuid

import pytest

from tests.cluster import Cluster
from tests.harness import free_port, wait_for
from tests.test_e2e_sessions import finish, spawn_session

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    made = Cluster(tmp_path, size=3)
    try:
        yield made.start()
    finally:
        made.close()


def settled(server, invoke_id: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (r := server.cli_json("invocations", "show", invoke_id))[
        "InvocationStatus"] not in ("Pending", "Running", "Stopping") and r, timeout,
        f"{invoke_id} settled")


def test_operator_on_one_replica_reaches_an_agent_held_by_another(cluster, tmp_path):
    agent = cluster.agent(tmp_path / "agent", on=0)
    agent.start(wait_online=False)
    try:
        holder = cluster.wait_held(agent.instance_id)
        r0, r1, r2 = cluster.others(holder) + [cluster.by_id(holder)]
        # every replica sees it online
        for replica in cluster.replicas:
            assert replica.online(agent.instance_id)
        # a command invoked on r1
        code, reply = r1.run_json(agent.instance_id, "--script", "echo from-$(hostname)-ok")
        assert code == 0, reply
        result = settled(r1, reply["InvokeId"])["Results"][0]
        assert result["InvocationStatus"] == "Success" and "-ok" in result["Output"]
        # a terminal session through r2
        child = spawn_session(r2, agent.instance_id, "--command", "echo across-$((6*7)); exit 3")
        child.expect("across-42")
        assert finish(child) == 3
        # a file both ways through r1
        src = tmp_path / "blob.bin"
        src.write_bytes(os.urandom(3 << 20))
        remote = f"/tmp/ph-replica-{os.getpid()}.bin"
        r1.cli("cp", str(src), f"{agent.instance_id}:{remote}")
        back = tmp_path / "back.bin"
        r2.cli("cp", f"{agent.instance_id}:{remote}", str(back))
        assert hashlib.sha256(back.read_bytes()).digest() == \
            hashlib.sha256(src.read_bytes()).digest()
        os.unlink(remote)
        # the sessions are listed on every replica
        sessions = r0.cli_json("sessions", "list")["Sessions"]
        assert {s["InstanceId"] for s in sessions} == {agent.instance_id}
        # its recording is served by its home replica; another one names that replica
        shell = next(s for s in sessions if "across" in s["CommandLine"])
        cast = tmp_path / "session.cast"
        r2.cli("sessions", "export", shell["SessionId"], "--file", str(cast))
        assert "across-42" in cast.read_text()
        elsewhere = r0.cli("sessions", "export", shell["SessionId"], "--file", str(cast),
                           check=False)
        assert elsewhere.returncode != 0
        assert f"kept by replica {cluster.replica_id(r2)}" in elsewhere.stderr
        # a session homed on r2 ended from r1
        child = spawn_session(r2, agent.instance_id, "--command", "echo wait$((1+1))ing; sleep 60")
        child.expect("wait2ing")
        active = r1.cli_json("sessions", "list", "--active")["Sessions"]
        assert len(active) == 1
        r1.cli("sessions", "terminate", active[0]["SessionId"])
        child.expect("terminated by admin")
        assert finish(child) != 0
    finally:
        agent.stop()


def test_killed_replica_agents_return_elsewhere_and_nothing_is_lost(cluster, tmp_path):
    agent = cluster.agent(tmp_path / "agent", on=0)
    agent.start(wait_online=False)
    try:
        holder = cluster.wait_held(agent.instance_id)
        r1, r2 = cluster.others(holder)
        r0 = cluster.by_id(holder)
        # results still running on the agent when its replica dies
        code, reply = r2.run_json(agent.instance_id, "--no-wait", "--script",
                                  "sleep 4; echo finished-$((40+2))")
        assert code == 0, reply
        invoke_id = reply["InvokeId"]
        # a session homed on r2, printing numbered lines while r0 is killed
        child = spawn_session(r2, agent.instance_id, "--command",
                              "for i in $(seq 1 300); do echo line-$i; sleep 0.02; done; "
                              "echo all-done")
        child.logfile_read = transcript = io.StringIO()
        child.expect("line-40")
        killed_at = time.monotonic()
        r0.stop(signal.SIGKILL)
        held_by = cluster.wait_held(agent.instance_id, not_by=holder, timeout=30)
        moved_after = time.monotonic() - killed_at
        assert held_by != holder
        child.expect("all-done", timeout=60)
        assert finish(child) == 0
        numbers = [int(n) for n in re.findall(r"line-(\d+)\r\n", transcript.getvalue())]
        assert numbers == list(range(1, 301)), "lines lost, duplicated or reordered"
        result = settled(r1, invoke_id)["Results"]
        assert len(result) == 1 and result[0]["InvocationStatus"] == "Success"
        assert result[0]["Output"].strip() == "finished-42"
        print(f"agent back on {held_by} {moved_after:.1f} s after the kill")
    finally:
        agent.stop()


def test_presence_follows_a_dead_replica(cluster, tmp_path):
    agent = cluster.agent(tmp_path / "agent")
    agent.start(wait_online=False)
    try:
        holder = cluster.wait_held(agent.instance_id)
        survivor = cluster.others(holder)[0]
        os.kill(agent.proc.pid, signal.SIGSTOP)  # it cannot dial another replica yet
        cluster.by_id(holder).stop(signal.SIGKILL)
        wait_for(lambda: not survivor.online(agent.instance_id), 40,
                 "the dead replica's agent shown offline")
        os.kill(agent.proc.pid, signal.SIGCONT)
        assert cluster.wait_held(agent.instance_id, not_by=holder) != holder
    finally:
        if agent.proc is not None:
            os.kill(agent.proc.pid, signal.SIGCONT)
        agent.stop()


def test_one_name_with_several_addresses_fails_over_from_a_silent_host(tmp_path):
    """The agent knows one URL whose name has an address per replica. The replica it holds
    dies and its host goes silent (connection attempts are dropped, not refused): the agent
    reaches the other address instead of waiting on the silent one."""
    name = f"ph{uuid.uuid4().hex[:8]}.replicas.test"
    made = Cluster(tmp_path, size=2, hostnames=(name, "127.0.0.2"))
    port = free_port()
    for n, replica in enumerate(made.replicas):
        replica.listen_on(f"127.0.0.{n + 1}", port)
    hosts = tmp_path / "hosts"  # the agent's own /etc/hosts, in a mount namespace of its own
    hosts.write_text(f"127.0.0.1 {name}\n127.0.0.2 {name}\n")
    prefix = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
              str(hosts)]
    drop: list[str] = []
    agent = None
    try:
        made.start()
        agent = made.agent(tmp_path / "agent", server=f"https://{name}:{port}", prefix=prefix)
        agent.start(wait_online=False)
        holder = made.wait_held(agent.instance_id)
        dead = made.by_id(holder)
        rule = ["INPUT", "-i", "lo", "-d", dead.url.split("//")[1].split(":")[0], "-p", "tcp",
                "--dport", str(port), "--syn", "-j", "DROP"]
        subprocess.run(["iptables", "-I", *rule], check=True)
        drop = rule  # removed again below only once it is in place
        dead.stop(signal.SIGKILL)
        survivor = made.others(holder)[0]
        wait_for(lambda: survivor.online(agent.instance_id) and
                 survivor.instance(agent.instance_id)["Replica"] != holder, 30,
                 "the agent back on the other address")
        code, reply = survivor.run_json(agent.instance_id, "--script", "echo via-$((6*7))")
        assert code == 0, reply
        assert "via-42" in settled(survivor, reply["InvokeId"])["Results"][0]["Output"]
    finally:
        if drop:
            subprocess.run(["iptables", "-D", *drop], check=False)
        if agent is not None:
            agent.stop()
        made.close()


def test_unreachable_nats_is_one_line_at_start(tmp_path):
    from tests.harness import BIN, Server

    server = Server(tmp_path, nats_url="nats://127.0.0.1:1")
    result = subprocess.run([str(BIN / "porthole-server"), "run", "--data-dir",
                             str(server.data_dir)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.startswith("porthole-server: cannot reach NATS at nats://127.0.0.1:1")
    assert result.stderr.count("\n") == 1


def test_bad_replica_settings_are_refused_with_the_key(tmp_path):
    from tests.harness import BIN, Server

    server = Server(tmp_path, replica_id="a.b")
    result = subprocess.run([str(BIN / "porthole-server"), "run", "--data-dir",
                             str(server.data_dir)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "replica_id 'a.b'" in result.stderr
    assert result.stderr.count("\n") == 1
