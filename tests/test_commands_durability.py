"""Results survive `kill -9` of the server and of the agent; offline instances get their
tasks when they come back; reboots start EveryReboot and NextRebootOnly invocations."""

from __future__ import annotations

import base64
import signal
import time

import pytest

from cli.client import Client
from cli.config import Profile
from tests.harness import Server, alive, wait_for

pytestmark = pytest.mark.slow

FINAL = ("Success", "PartialFailed", "Failed", "Stopped")


def api(server: Server) -> Client:
    return Client(Profile(server=server.url, ca_file=str(server.ca_file),
                          access_key_id=server.admin["AccessKeyId"],
                          access_key_secret=server.admin["AccessKeySecret"]))


def results(server: Server, invoke_id: str, **kw) -> dict:
    return api(server).call("DescribeInvocationResults", InvokeId=invoke_id, **kw)


def test_kill_9_server_with_100_invocations_running(server, make_agent, tmp_path):
    agents = [make_agent(), make_agent()]
    log, gate = tmp_path / "ran.log", tmp_path / "gate"
    c = api(server)
    invokes = {}
    for n in range(100):
        a = agents[n % 2]
        after = "sleep 4; " if n % 2 else ""  # half end while the server is down, half after
        script = (f"echo {n} >> {log}; while [ ! -e {gate} ]; do sleep 0.1; done; "
                  f"{after}echo out-{n}")
        invokes[n] = c.call("RunCommand", InstanceIds=[a.instance_id], Timeout=300,
                            CommandContent=script)["InvokeId"]

    def all_running() -> bool:
        rows = c.call("DescribeInvocations", PageSize=100)["Invocations"]
        return sum(r["StatusCounts"].get("Running", 0) for r in rows) == 100 and \
            len(log.read_text().split()) == 100
    wait_for(all_running, 120, "100 invocations running")
    server.stop(signal.SIGKILL)
    gate.touch()
    time.sleep(1.5)
    server.start()
    c = api(server)

    def all_done() -> bool:
        rows = c.call("DescribeInvocations", PageSize=100)["Invocations"]
        return len(rows) == 100 and all(r["InvocationStatus"] in FINAL for r in rows)
    wait_for(all_done, 120, "every result after the restart")
    for n, invoke_id in invokes.items():
        reply = results(server, invoke_id, IncludeHistory=True)
        assert reply["TotalCount"] == 1
        (r,) = reply["Results"]
        assert r["InvocationStatus"] == "Success", (n, r)
        assert base64.b64decode(r["Output"]) == f"out-{n}\n".encode()
    ran = sorted(int(x) for x in log.read_text().split())
    assert ran == list(range(100))  # every script ran exactly once
    for a in agents:  # every result was acknowledged, so the spools empty
        wait_for(lambda a=a: not any((a.state_dir / "spool").iterdir()), 30, "spool empty")



def test_agent_killed_mid_run_reports_terminated(server, make_agent, tmp_path):
    agent = make_agent()
    pidfile = tmp_path / "child.pid"
    c = api(server)
    invoke_id = c.call("RunCommand", InstanceIds=[agent.instance_id], Timeout=600,
                       CommandContent=f"sleep 300 & echo $! > {pidfile}; echo started; wait"
                       )["InvokeId"]
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "script started")
    time.sleep(0.3)  # let "started" reach the spool
    agent.stop(signal.SIGKILL)
    child = int(pidfile.read_text())
    assert alive(child)
    agent.start()
    reply = wait_for(lambda: (r := results(server, invoke_id))["InvocationStatus"] in FINAL
                     and r, 30, "a result after the agent restarted")
    (r,) = reply["Results"]
    assert r["InvocationStatus"] == "Terminated" and r["ErrorCode"] == "ClientRestarted"
    assert base64.b64decode(r["Output"]) == b"started\n"
    wait_for(lambda: not alive(child), 10, "the orphaned child killed")


def test_offline_instance_gets_its_task_when_it_returns(server, make_agent):
    agent = make_agent()
    agent.stop()
    wait_for(lambda: not server.online(agent.instance_id), 30, "agent offline")
    c = api(server)
    waiting = c.call("RunCommand", InstanceIds=[agent.instance_id],
                     CommandContent="echo back", DeliveryTimeout=600)["InvokeId"]
    expiring = c.call("RunCommand", InstanceIds=[agent.instance_id],
                      CommandContent="echo never", DeliveryTimeout=1)["InvokeId"]
    late = wait_for(lambda: (r := results(server, expiring))["InvocationStatus"] in FINAL
                    and r, 30, "delivery timeout")
    assert late["Results"][0]["ErrorCode"] == "DeliveryTimeout"
    assert results(server, waiting)["InvocationStatus"] == "Pending"
    agent.start()
    done = wait_for(lambda: (r := results(server, waiting))["InvocationStatus"] in FINAL
                    and r, 30, "delivered after reconnecting")
    assert done["InvocationStatus"] == "Success"
    assert base64.b64decode(done["Results"][0]["Output"]) == b"back\n"


def test_every_reboot_and_next_reboot_only(server, make_agent, monkeypatch):
    monkeypatch.setenv("PORTHOLE_AGENT_BOOT_ID", "boot-1")
    agent = make_agent()
    c = api(server)
    every = c.call("RunCommand", InstanceIds=[agent.instance_id], RepeatMode="EveryReboot",
                   CommandContent="echo every")["InvokeId"]
    once = c.call("RunCommand", InstanceIds=[agent.instance_id], RepeatMode="NextRebootOnly",
                  CommandContent="echo once")["InvokeId"]
    for invoke_id in (every, once):
        reply = results(server, invoke_id)
        assert reply["InvocationStatus"] == "Scheduled" and reply["Results"] == []

    def restart(boot: str) -> None:
        agent.stop()
        wait_for(lambda: not server.online(agent.instance_id), 30, "agent offline")
        monkeypatch.setenv("PORTHOLE_AGENT_BOOT_ID", boot)
        agent.start()

    def runs(invoke_id: str) -> list[dict]:
        return list(results(server, invoke_id, IncludeHistory=True)["Results"])

    restart("boot-1")  # the agent restarted, the instance did not reboot: nothing runs
    time.sleep(1.5)
    assert runs(every) == [] and runs(once) == []
    restart("boot-2")
    wait_for(lambda: len(runs(every)) == 1 and len(runs(once)) == 1
             and all(r["InvocationStatus"] == "Success" for r in runs(every) + runs(once)),
             30, "both ran after the reboot")
    assert results(server, once)["InvocationStatus"] == "Success"
    assert results(server, every)["InvocationStatus"] == "Scheduled"
    restart("boot-3")
    wait_for(lambda: len(runs(every)) == 2 and runs(every)[1]["InvocationStatus"] == "Success",
             30, "EveryReboot ran again")
    assert len(runs(once)) == 1
    c.call("StopInvocation", InvokeId=every)
    assert results(server, every)["InvocationStatus"] == "Stopped"
