"""Real processes for end-to-end tests: a server, agents and the CLI, all on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, ended but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Server:
    def __init__(self, root: Path, regions: tuple[str, ...] = ("local",),
                 hostnames: tuple[str, ...] = (), listen_host: str = "127.0.0.1",
                 port: int | None = None, init_args: tuple[str, ...] = (),
                 **settings: Any) -> None:
        self.data_dir = root / "server"
        self.port = port or free_port()
        self.url = f"https://{listen_host}:{self.port}"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.agents_depend = False  # set once agents were registered against this port
        args = [str(BIN / "porthole-server"), "init", "--data-dir", str(self.data_dir),
                "--listen", f"{listen_host}:{self.port}"]
        for r in regions:
            args += ["--region", r]
        for h in hostnames:
            args += ["--hostname", h]
        subprocess.run([*args, *init_args], check=True, capture_output=True)
        if settings:  # edit server.yaml as an operator would
            config_file = self.data_dir / "server.yaml"
            config = yaml.safe_load(config_file.read_text())
            config.update(settings)
            config_file.write_text(yaml.safe_dump(config))
        self.admin = json.loads((self.data_dir / "admin.json").read_text())
        self.ca_file = self.data_dir / "ca.pem"

    def start(self) -> Server:
        for _ in range(3):
            log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
            self.proc = subprocess.Popen(
                [str(BIN / "porthole-server"), "run", "--data-dir", str(self.data_dir)],
                stdout=log, stderr=subprocess.STDOUT,
            )
            try:
                wait_for(self.healthy, 20, "server health")
                return self
            except AssertionError:
                if "address already in use" not in self.log() or self.agents_depend:
                    raise
            self._move_to_free_port()  # another process took the port meanwhile
        raise AssertionError(f"server did not start: {self.log()}")

    def _move_to_free_port(self) -> None:
        config = yaml.safe_load((self.data_dir / "server.yaml").read_text())
        self.listen_on(config["listen"].rpartition(":")[0], free_port())

    def listen_on(self, host: str, port: int) -> None:
        """Serve on another address from the next start (server.yaml's listen)."""
        config_file = self.data_dir / "server.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["listen"] = f"{host}:{port}"
        config_file.write_text(yaml.safe_dump(config))
        self.port, self.url = port, f"https://{host}:{port}"

    def healthy(self) -> dict[str, Any] | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"server exited: {self.log()}")
        try:
            return self.get_json("/healthz")
        except OSError:
            return None

    def connected(self) -> int:
        """Agents connected as the server counts them, or -1 if it did not answer in time."""
        try:
            return int(self.get_json("/healthz")["AgentsConnected"])
        except (OSError, ValueError, KeyError):
            return -1

    def get_json(self, path: str) -> Any:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(self.url + path, context=ctx, timeout=5) as r:
            return json.loads(r.read())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PORTHOLE_SERVER": self.url,
            "PORTHOLE_CA_FILE": str(self.ca_file),
            "PORTHOLE_ACCESS_KEY_ID": self.admin["AccessKeyId"],
            "PORTHOLE_ACCESS_KEY_SECRET": self.admin["AccessKeySecret"],
            "PORTHOLE_REGION": "local",
            "PORTHOLE_CONFIG": str(self.data_dir.parent / "cli-config"),
        })
        env.update(extra)
        return env

    def cli(self, *args: str, check: bool = True, timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(BIN / "porthole"), *args], capture_output=True, text=True,
                                env=self.env(**env), timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"porthole {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stderr}{result.stdout}")
        return result

    def cli_json(self, *args: str, **env: str) -> Any:
        return json.loads(self.cli(*args, "--output", "json", **env).stdout)

    def activation(self, count: int = 10, expires: str = "1h", region: str = "local"
                   ) -> dict[str, Any]:
        return self.cli_json("activation", "create", "--region", region, "--count", str(count),
                             "--expires", expires)

    def instance(self, instance_id: str) -> dict[str, Any] | None:
        rows = self.cli_json("instances")["Instances"]
        return next((r for r in rows if r["InstanceId"] == instance_id), None)

    def online(self, instance_id: str) -> bool:
        row = self.instance(instance_id)
        return bool(row and row["AgentStatus"] == "Online")

    def run_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = self.cli("run", *args, "--output", "json", check=False)
        try:
            return result.returncode, json.loads(result.stdout)
        except ValueError:
            raise AssertionError(f"porthole run gave no JSON: {result.stderr}") from None


class Agent:
    def __init__(self, server: Server, state_dir: Path, activation: dict[str, Any] | None = None,
                 region: str = "local", prefix: list[str] | None = None) -> None:
        self.server = server
        self.prefix = prefix or []  # e.g. ["ip", "netns", "exec", NAME]
        self.state_dir = state_dir
        self.log_path = state_dir.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        activation = activation or server.activation(count=1)
        server.agents_depend = True
        result = register(server, state_dir, activation, region, self.prefix)
        if result.returncode != 0:
            raise AssertionError(f"register failed: {result.stderr}")
        self.instance_id = json.loads(result.stdout)["InstanceId"]

    def start(self, wait_online: bool = True) -> Agent:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [*self.prefix, str(BIN / "porthole-agent"), "run", "--state-dir", str(self.state_dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        if wait_online:
            wait_for(lambda: self.server.online(self.instance_id), 30,
                     f"{self.instance_id} online")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def register(server: Server, state_dir: Path, activation: dict[str, Any],
             region: str = "local", prefix: list[str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), str(BIN / "porthole-agent"), "register", "--server", server.url,
         "--ca-file", str(server.ca_file), "--activation-id", activation["ActivationId"],
         "--activation-code", activation["ActivationCode"], "--region", region,
         "--state-dir", str(state_dir), "--output", "json"],
        capture_output=True, text=True, timeout=60,
    )


class CutProxy:
    """A TCP forwarder on loopback whose connections a test can cut at will (TLS passes
    through untouched). Runs in a thread; new connections are accepted again after a cut."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self.refusing = False
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> int:
        """Reset every open connection (as a dropped link would); returns how many."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the pipe threads; peers see the link die
                s.close()
            except OSError:
                pass
        return len(conns) // 2

    def close(self) -> None:
        self.listener.close()
        self.cut()
