"""Interactive-session benchmark: `porthole session` against OpenSSH on the same machine.

Starts a throwaway porthole server and agent plus a private sshd, all on loopback, then
measures in each tool, through a local PTY just as an operator's terminal would see it:

* keystroke echo round trip: one byte written, time until it comes back from a remote
  ``cat`` on a raw TTY (median and p99);
* bulk output throughput: ``head -c NM /dev/zero | base64 -w 0`` read until an end marker.

Run as root (the agent starts shells as other users): ``.venv/bin/python bench/session.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import BIN, Agent, Server, free_port, wait_for  # noqa: E402

READY = b"BENCH-READY"
END = b"END-MARKER"
KEYS = b"abcdefghijklmnopqrstuvwxyz0123456789"
WARMUP = 20


# --- a local terminal ------------------------------------------------------------------


class Terminal:
    """A command on a fresh local PTY (rows x cols 24x80) that we drive through its master."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        try:
            self.proc = subprocess.Popen(
                argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                start_new_session=True, preexec_fn=_take_controlling_tty,
            )
        finally:
            os.close(slave)

    def write(self, data: bytes) -> None:
        """Write all of ``data`` to the program's terminal input."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view):]

    def read(self, timeout: float) -> bytes:
        """One read of whatever output is ready; b"" on timeout, EOFError at hang-up."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.master, 1 << 16)
        except OSError:  # EIO: the program and all its children closed the terminal
            data = b""
        if not data:
            raise EOFError("the program closed its terminal")
        return data

    def read_until(self, marker: bytes, timeout: float = 30.0) -> int:
        """Read until ``marker`` appears; returns how many bytes were read."""
        deadline = time.monotonic() + timeout
        total, tail = 0, b""
        while marker not in tail:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {marker!r} within {timeout} s; last output {tail!r}")
            chunk = self.read(left)
            total += len(chunk)
            tail = tail[-len(marker):] + chunk
        return total

    def close(self) -> None:
        """Hang up and make sure the program and its process group are gone."""
        with contextlib.suppress(OSError):
            os.close(self.master)
        _stop(self.proc, group=True)


def _take_controlling_tty() -> None:  # in the child, between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """SIGTERM, then SIGKILL after a grace period; ``group`` signals its process group."""
    if proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
            return


# --- the two tools -----------------------------------------------------------------------


@contextlib.contextmanager
def porthole(root: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """A server and one agent; yields the session command line and its environment."""
    server = Server(root)
    agent: Agent | None = None
    try:
        server.start()
        agent = Agent(server, root / "agent").start()
        yield [str(BIN / "porthole"), "session", agent.instance_id], server.env(TERM="xterm")
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


def ensure_sshd() -> str:
    """Path of sshd, installing openssh-server with apt-get when it is missing."""
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else "")
    if not found:
        print("sshd not found; installing openssh-server with apt-get", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "openssh-server", "openssh-client"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        found = "/usr/sbin/sshd"
    return found


def _sshd_config(root: Path, port: int, host_key: Path, authorized: Path) -> Path:
    lines = [
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"PidFile {root / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "UsePAM no",
        "StrictModes no", "PrintMotd no", "PrintLastLog no", "UseDNS no",
    ]
    config = root / "sshd_config"
    config.write_text("\n".join(lines) + "\n")
    return config


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def openssh(sshd: str, root: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """A private sshd on loopback; yields the ssh command line and its environment."""
    root.mkdir()
    host_key, client_key = root / "host_ed25519", root / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    authorized = root / "authorized_keys"
    authorized.write_bytes(client_key.with_suffix(".pub").read_bytes())
    port = free_port()
    config = _sshd_config(root, port, host_key, authorized)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = open(root / "sshd.log", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([sshd, "-f", str(config), "-D", "-e"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    ssh = ["ssh", "-tt", "-i", str(client_key), "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-p", str(port),
           "root@127.0.0.1"]
    env = dict(os.environ, TERM="xterm")
    try:
        wait_for(lambda: _ssh_works(ssh, proc, root), 20, "sshd to accept the client key")
        yield ssh, env
    finally:
        _stop(proc, group=True)  # with its per-connection children
        log.close()


def _ssh_works(ssh: list[str], proc: subprocess.Popen[bytes], root: Path) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text(errors='replace')}")
    argv = [a for a in ssh if a != "-tt"] + ["-o", "BatchMode=yes", "true"]
    return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0


# --- measurements ----------------------------------------------------------------------


@dataclass
class Figures:
    echo_ms: list[float]
    mib_per_s: float
    read_bytes: int


def open_shell(argv: list[str], env: dict[str, str]) -> Terminal:
    """An interactive bash in ``argv``'s session, ready for input."""
    term = Terminal(argv, env)
    term.write(b"exec /bin/bash --norc --noprofile\r")
    term.write(b"PS1='$ '; echo BENCH-RE''ADY\r")
    term.read_until(READY, timeout=60)
    return term


def bulk(term: Terminal, mib: int) -> tuple[float, int]:
    """Seconds and bytes read for ``mib`` MiB of zeros, base64-encoded on one line."""
    term.write(b"stty -echo; echo BENCH-RE''ADY\r")
    term.read_until(READY)
    time.sleep(0.2)
    while term.read(0.1):  # drain the rest of the prompt
        pass
    start = time.perf_counter()
    term.write(f"head -c {mib}M /dev/zero | base64 -w 0; echo; echo END-''MARKER\r".encode())
    total = term.read_until(END, timeout=600)
    return time.perf_counter() - start, total


def keystrokes(term: Terminal, count: int) -> list[float]:
    """Round trips in ms of single bytes through a remote ``cat`` on a raw TTY."""
    term.write(b"stty raw -echo; echo BENCH-RE''ADY; exec cat\r")
    term.read_until(READY)
    time.sleep(0.5)
    while term.read(0.1):
        pass
    times = []
    for i in range(WARMUP + count):
        key = KEYS[i % len(KEYS):][:1]
        start = time.perf_counter_ns()
        term.write(key)
        got = b""
        while key not in got:
            got = term.read(10.0)
            if not got:
                raise TimeoutError(f"keystroke {key!r} did not come back within 10 s")
        if i >= WARMUP:
            times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def measure(argv: list[str], env: dict[str, str], count: int, mib: int) -> Figures:
    """Both measurements in one session of the tool."""
    term = open_shell(argv, env)
    try:
        seconds, total = bulk(term, mib)
        echo = keystrokes(term, count)
    finally:
        term.close()
    return Figures(echo, total / seconds / (1 << 20), total)


# --- report ----------------------------------------------------------------------------


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def table(ph: Figures, ssh: Figures, count: int, mib: int) -> str:
    rows = [
        (f"echo RTT median, ms (n={count})", statistics.median(ph.echo_ms),
         statistics.median(ssh.echo_ms)),
        ("echo RTT p99, ms", p99(ph.echo_ms), p99(ssh.echo_ms)),
        ("echo RTT max, ms", max(ph.echo_ms), max(ssh.echo_ms)),
        (f"bulk output, MiB/s ({mib} MiB base64)", ph.mib_per_s, ssh.mib_per_s),
    ]
    lines = [f"{'metric':<38} {'porthole':>10} {'openssh':>10} {'ratio':>8}"]
    lines.append("-" * len(lines[0]))
    for name, a, b in rows:
        lines.append(f"{name:<38} {a:>10.3f} {b:>10.3f} {a / b:>8.2f}")
    lines.append("ratio = porthole / openssh (lower is better for RTT, higher for MiB/s)")
    return "\n".join(lines)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def leave_on_signals() -> None:
    """SIGTERM and SIGHUP leave through the finally blocks, which stop what the bench
    started."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)


def session_arguments(description: str, rounds: int = 0) -> argparse.Namespace:
    """--keystrokes and --bytes (and --rounds, when ``rounds`` gives its default), for a run
    as root."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--keystrokes", type=int, default=300, help="round trips to time")
    parser.add_argument("--bytes", type=int, default=100, metavar="MB",
                        help="MiB of zeros to base64 for the bulk test")
    if rounds:
        parser.add_argument("--rounds", type=int, default=rounds,
                            help="measure every path this many times, interleaved")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: the agent starts sessions as porthole-user")
    return args


def main() -> int:
    args = session_arguments(__doc__.splitlines()[0])
    began = time.monotonic()
    leave_on_signals()
    sshd = ensure_sshd()
    with tempfile.TemporaryDirectory(prefix="porthole-bench-") as tmp:
        root = Path(tmp)
        with porthole(root) as (argv, env):
            ph = measure(argv, env, args.keystrokes, args.bytes)
        with openssh(sshd, root / "ssh") as (argv, env):
            ssh = measure(argv, env, args.keystrokes, args.bytes)
    print(table(ph, ssh, args.keystrokes, args.bytes))
    print(f"bytes read: porthole {ph.read_bytes}, openssh {ssh.read_bytes}; "
          f"wall time {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
