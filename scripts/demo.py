"""`make demo`: a throwaway server and one local agent, then a shell session through them.

Everything lives in a temporary directory and every process started here is stopped on the
way out (normal exit, Ctrl-C or error).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="porthole-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    data = work / "server"
    env = {**os.environ, "PORTHOLE_CONFIG": str(work / "cli-config")}

    def porthole(*args: str) -> dict:
        out = subprocess.run([str(BIN / "porthole"), *args, "--output", "json"], env=env,
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    try:
        say(f"initialising a throwaway server in {data}")
        subprocess.run([str(BIN / "porthole-server"), "init", "--data-dir", str(data),
                        "--listen", f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
        procs.append(subprocess.Popen(
            [str(BIN / "porthole-server"), "run", "--data-dir", str(data)],
            stdout=open(work / "server.log", "wb"), stderr=subprocess.STDOUT))  # noqa: SIM115
        ctx = ssl.create_default_context(cafile=str(data / "ca.pem"))

        def healthy() -> bool:
            try:
                urllib.request.urlopen(url + "/healthz", context=ctx, timeout=2).read()
                return True
            except OSError:
                return False

        wait(healthy, 30, "the server")
        say(f"server is up at {url} (TLS, its own CA in {data / 'ca.pem'})")
        subprocess.run([str(BIN / "porthole"), "configure", "--server", url, "--ca-file",
                        str(data / "ca.pem"), "--credentials-file", str(data / "admin.json"),
                        "--region", "local"], env=env, check=True, stdout=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL)
        act = porthole("activation", "create", "--region", "local", "--count", "1")
        say(f"created activation {act['ActivationId']}; registering a local agent")
        out = subprocess.run(
            [str(BIN / "porthole-agent"), "register", "--server", url, "--ca-file",
             str(data / "ca.pem"), "--activation-id", act["ActivationId"], "--activation-code",
             act["ActivationCode"], "--region", "local", "--state-dir", str(work / "agent"),
             "--output", "json"], check=True, capture_output=True, text=True).stdout
        instance = json.loads(out)["InstanceId"]
        procs.append(subprocess.Popen(
            [str(BIN / "porthole-agent"), "run", "--state-dir", str(work / "agent")],
            stdout=open(work / "agent.log", "wb"), stderr=subprocess.STDOUT))  # noqa: SIM115

        def online() -> bool:
            rows = porthole("instances")["Instances"]
            return any(r["InstanceId"] == instance and r["AgentStatus"] == "Online" for r in rows)

        wait(online, 30, "the agent to come online")
        say(f"agent {instance} dialled out and is online; its instance list:")
        subprocess.run([str(BIN / "porthole"), "instances", "--output", "table"], env=env)
        user = [] if os.geteuid() == 0 else ["--user", getpass.getuser()]
        say(f"RunCommand `uname -a; id` on {instance} through the server:")
        subprocess.run([str(BIN / "porthole"), "run", instance, *user, "--script",
                        "uname -a; id", "--output", "text"], env=env, check=True)
        if sys.stdin.isatty() and sys.stdout.isatty():
            say(f"opening a shell on {instance}: type `exit` (or ~. after a newline) to leave")
            result = subprocess.run([str(BIN / "porthole"), "session", instance, *user,
                                     "--reason", "make demo"], env=env)
        else:
            say(f"no terminal here, so a one-command session instead of a shell on {instance}:")
            result = subprocess.run([str(BIN / "porthole"), "session", instance, *user,
                                     "--command", "uname -a; id; tty"], env=env)
        say(f"the session ended with status {result.returncode}; it was recorded:")
        subprocess.run([str(BIN / "porthole"), "sessions", "list", "--output", "table"],
                       env=env)
        return 0
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        print(f"demo failed: {exc} {stderr}".strip(), file=sys.stderr)
        for log in ("server.log", "agent.log"):
            if (work / log).exists():
                print(f"--- {log}\n{(work / log).read_text()[-2000:]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        say("cleaning up: stopping the agent and the server, removing " + str(work))
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
