"""Running as a service: systemd units and notify, metrics, status, reloads."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from server.pki import issue_server_cert
from tests.harness import BIN, wait_for

UNITS = Path(__file__).resolve().parents[1] / "deploy" / "systemd"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is missing")
@pytest.mark.parametrize("unit", ["porthole-agent.service", "porthole-server.service"])
def test_systemd_units_verify(unit, tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's installed scripts
    text = (UNITS / unit).read_text().replace("/opt/porthole/venv/bin/", f"{BIN}/")
    (tmp_path / unit).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "porthole" in text and "[Install]" in text


def test_agent_speaks_systemd_notify_and_watchdog(server, make_agent, tmp_path):
    agent = make_agent(start=False)
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        log = open(agent.log_path, "ab")  # noqa: SIM115
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
        agent.proc = subprocess.Popen(
            [str(BIN / "porthole-agent"), "run", "--state-dir", str(agent.state_dir)],
            stdout=log, stderr=subprocess.STDOUT, env={**server.env(), **env})
        messages: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
                "READY=1" not in messages or messages.count("WATCHDOG=1") < 3
                or not any(m.startswith("STATUS=connected") for m in messages)):
            messages.append(sock.recv(4096).decode())
    assert messages[0] == "READY=1"
    assert any(m.startswith("STATUS=connected to wss://") for m in messages)
    assert messages.count("WATCHDOG=1") >= 3  # every half WatchdogSec while the loop runs


def test_metrics_parse_and_count(server, make_agent):
    agent = make_agent()
    server.cli("run", agent.instance_id, "--script", "true")
    bad = server.cli("instances", check=False, PORTHOLE_ACCESS_KEY_SECRET="wrong")
    assert bad.returncode == 1
    ctx = ssl.create_default_context(cafile=str(server.ca_file))

    families: set[str] = set()

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(server.url + "/metrics", context=ctx) as r:
            text = r.read().decode()
        values = {}
        for family in text_string_to_metric_families(text):
            families.add(family.name)
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}"] = sample.value
        return values

    values = scrape()
    assert values["porthole_agents_online{region=local}"] == 1
    assert values["porthole_authentication_failures_total{code=SignatureDoesNotMatch,"
                  "peer=operator}"] >= 1
    assert {"porthole_sessions_active", "porthole_invocation_results",
            "porthole_frame_errors"} <= families
    child = subprocess.run([str(BIN / "porthole"), "session", agent.instance_id, "--command",
                            "head -c 5000 /dev/zero"], env=server.env(), capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=60)
    assert child.returncode == 0
    values = scrape()
    assert values["porthole_relayed_bytes_total{direction=to_operator}"] >= 5000


def test_agent_status_command(server, make_agent):
    agent = make_agent()
    wait_for(lambda: _status(agent)["LastHeartbeat"], 30, "a heartbeat ack")
    status = _status(agent)
    assert status["Running"] and status["Connected"]
    assert status["InstanceId"] == agent.instance_id and status["Server"] == server.url
    text = subprocess.run([str(BIN / "porthole-agent"), "status", "--state-dir",
                           str(agent.state_dir)], capture_output=True, text=True)
    assert "connected since" in text.stdout and text.returncode == 0
    agent.stop()
    stopped = subprocess.run([str(BIN / "porthole-agent"), "status", "--state-dir",
                              str(agent.state_dir)], capture_output=True, text=True)
    assert stopped.returncode == 3 and "not running" in stopped.stdout


def _status(agent) -> dict:
    out = subprocess.run([str(BIN / "porthole-agent"), "status", "--state-dir",
                          str(agent.state_dir), "--output", "json"], capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def _served_serial(server) -> int:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with socket.create_connection(("127.0.0.1", server.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_sighup_reloads_the_certificate_without_dropping_agents(server, make_agent):
    agent = make_agent()
    before = _served_serial(server)
    issue_server_cert(server.data_dir, [])
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _served_serial(server) != before, 10, "the new certificate")
    assert "reloaded the TLS certificate" in server.log()
    time.sleep(1)
    assert agent.log().count("connected to") == 1  # the agent's connection went on
    rc, reply = server.run_json(agent.instance_id, "--script", "echo still")
    assert rc == 0


def test_sigterm_stops_promptly_and_agents_return(server, make_agent):
    agent = make_agent()
    started = time.monotonic()
    server.stop(signal.SIGTERM)
    assert time.monotonic() - started < 15
    assert "shutting down" in server.log()
    server.start()
    wait_for(lambda: server.online(agent.instance_id), 30, "agent back")


def test_a_command_runs_on_through_a_sigterm_restart_and_ends_once(server, make_agent,
                                                                   tmp_path):
    agent = make_agent()
    runs = tmp_path / "runs"
    invoke_id = server.cli("run", agent.instance_id, "--no-wait", "--output", "text",
                           "--script", f"echo run >> {runs}; sleep 6; echo done").stdout.strip()
    wait_for(runs.exists, 30, "the command started")
    port = server.port
    server.stop(signal.SIGTERM)
    server.start()
    assert server.port == port
    wait_for(lambda: server.online(agent.instance_id), 30, "agent back")

    def settled() -> dict | None:
        reply = server.cli_json("invocations", "show", invoke_id)
        return reply if reply["InvocationStatus"] not in ("Pending", "Running") else None

    reply = wait_for(settled, 60, "the invocation ended")
    assert reply["InvocationStatus"] == "Success"
    (result,) = reply["Results"]
    assert (result["InvocationStatus"], result["ExitCode"], result["Output"]) == \
        ("Success", 0, "done\n")
    assert len(server.cli_json("invocations", "show", invoke_id, "--history")["Results"]) == 1
    assert runs.read_text() == "run\n"  # the agent ran it once, not again on reconnection
    events = server.cli_json("audit", "list", "--action", "InvocationEnd")["Events"]
    assert [json.loads(e["Detail"])["InvokeId"] for e in events].count(invoke_id) == 1
    assert server.online(agent.instance_id)
