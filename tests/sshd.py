"""A private OpenSSH server for tests and benchmarks (optionally inside a network namespace)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.harness import free_port, wait_for


def sshd_path() -> str:
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else "")
    if not found:
        raise RuntimeError("sshd is missing: apt-get install openssh-server")
    return found


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL)


class Sshd:
    """sshd listening on 127.0.0.1 only, root login with a fresh client key."""

    def __init__(self, root: Path, prefix: list[str] | None = None) -> None:
        self.root = root
        self.prefix = prefix or []  # e.g. ["ip", "netns", "exec", NAME]
        root.mkdir(parents=True, exist_ok=True)
        self.host_key, self.client_key = root / "host_ed25519", root / "client_ed25519"
        keygen(self.host_key)
        keygen(self.client_key)
        authorized = root / "authorized_keys"
        authorized.write_bytes(self.client_key.with_suffix(".pub").read_bytes())
        self.port = free_port()
        self.config = root / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"PidFile {root / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
            "PrintMotd no", "PrintLastLog no", "UseDNS no",
            "Subsystem sftp internal-sftp",
        ]) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sshd:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        log = open(self.root / "sshd.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([*self.prefix, sshd_path(), "-f", str(self.config), "-D",
                                      "-e"], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(self._listening, 20, "sshd to listen")
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"sshd exited: {(self.root / 'sshd.log').read_text()}")
        probe = [*self.prefix, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{self.port}"]
        return subprocess.run(probe, capture_output=True).returncode == 0

    def client_options(self) -> list[str]:
        return ["-i", str(self.client_key), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "BatchMode=yes"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
