"""deploy/install-agent.sh against a local server: install, come online, upgrade, uninstall."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.harness import wait_for

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / "deploy" / "install-agent.sh"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="the installer needs root")]


def test_install_upgrade_restart_and_uninstall(server, tmp_path):
    prefix, state, units = tmp_path / "opt", tmp_path / "state", tmp_path / "units"
    act = server.activation(count=1)
    args = ["bash", str(INSTALLER), "--server", server.url, "--ca-file", str(server.ca_file),
            "--activation-id", act["ActivationId"], "--activation-code", act["ActivationCode"],
            "--region", "local", "--prefix", str(prefix), "--state-dir", str(state),
            "--unit-dir", str(units)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    instance_id = re.search(r"mi-[0-9a-f]{17}", first.stdout).group(0)
    unit = (units / "porthole-agent.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1)
    assert exec_start.startswith(f"{prefix}/venv/bin/porthole-agent run --state-dir {state}")
    assert (state / "agent.key").stat().st_mode & 0o777 == 0o600
    (state / "agent.yaml").write_text("upgrade_check_interval: 1\n")
    # systemd is not PID 1 here: run what the unit would run, with a clean environment
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PORTHOLE"))}
    log_path = tmp_path / "agent.log"
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the process
    agent = subprocess.Popen(shlex.split(exec_start), stdout=log, stderr=subprocess.STDOUT,
                             env=env)
    try:
        wait_for(lambda: server.online(instance_id), 60, "installed agent online")
        assert server.instance(instance_id)["AgentVersion"] == "0.1.0"
        # an upgrade of the installed package: the running agent restarts itself in place
        init = next(prefix.glob("venv/lib/python3*/site-packages/agent/__init__.py"))
        init.write_text(init.read_text().replace('"0.1.0"', '"0.1.1"'))
        try:
            wait_for(lambda: (server.instance(instance_id) or {}).get("AgentVersion")
                     == "0.1.1", 60, "the agent to come back as 0.1.1")
        except AssertionError:
            raise AssertionError(log_path.read_text()[-3000:]) from None
        assert agent.poll() is None  # same process, re-executed
        again = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "already registered" in again.stdout
    finally:
        agent.terminate()
        agent.wait(20)
        log.close()
    gone = subprocess.run(["bash", str(INSTALLER), "--uninstall", "--prefix", str(prefix),
                           "--state-dir", str(state), "--unit-dir", str(units)],
                          capture_output=True, text=True, timeout=120)
    assert gone.returncode == 0, gone.stderr
    assert not prefix.exists() and not (units / "porthole-agent.service").exists()
    assert (state / "agent.json").exists() and not (state / "agent.key").exists()


def test_installer_refuses_missing_values(tmp_path):
    result = subprocess.run(["bash", str(INSTALLER), "--prefix", str(tmp_path / "p"),
                             "--state-dir", str(tmp_path / "s"), "--unit-dir",
                             str(tmp_path / "u"), "--package", "/nonexistent"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
