"""Port-forwarding and file-copy benchmark: `porthole forward`/`cp` against OpenSSH.

Starts a throwaway porthole server and agent, a private sshd and a local byte source, all
on loopback, then measures in the same run:

* forwarding throughput for one connection and for 8 parallel connections (aggregate),
  through ``porthole forward INSTANCE --remote-port P`` and through ``ssh -N -L``;
* file copy wall-clock throughput of one large file, ``porthole cp`` against ``scp``.

The byte source reads a decimal byte count and a newline, sends that many bytes and closes;
the client counts what arrives until EOF. MB/s here is 10^6 bytes per second.

Run as root (the agent writes copies as root): ``.venv/bin/python bench/forward.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.session import leave_on_signals  # noqa: E402
from tests.harness import BIN, Agent, Server, free_port, wait_for  # noqa: E402
from tests.sshd import Sshd  # noqa: E402

MIB = 1 << 20
CHUNK = 1 << 20
PARALLEL = 8
TIMEOUT = 600.0


# --- the byte source ---------------------------------------------------------------------


class _SourceHandler(socketserver.BaseRequestHandler):
    """Reads ``COUNT\\n``, sends COUNT bytes, closes."""

    block = memoryview(os.urandom(CHUNK))

    def handle(self) -> None:
        request = b""
        while not request.endswith(b"\n") and len(request) < 32:
            data = self.request.recv(32)
            if not data:
                return  # a readiness probe: nothing asked for
            request += data
        left = int(request)
        with contextlib.suppress(OSError):
            while left > 0:
                n = min(left, CHUNK)
                self.request.sendall(self.block[:n])
                left -= n


class _SourceServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def _serve_source(port: int) -> None:
    """Body of the byte-source process."""
    with _SourceServer(("127.0.0.1", port), _SourceHandler) as server:
        server.serve_forever()


@contextlib.contextmanager
def byte_source() -> Iterator[int]:
    """The byte source in its own process (no GIL shared with the clients); yields its port."""
    port = free_port()
    proc = multiprocessing.get_context("fork").Process(target=_serve_source, args=(port,),
                                                       daemon=True)
    proc.start()
    try:
        wait_for(lambda: _accepts(port), 20, "byte source to listen")
        yield port
    finally:
        proc.terminate()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


# --- clients -----------------------------------------------------------------------------


def fetch(port: int, count: int) -> tuple[float, float, int]:
    """Ask the source behind ``port`` for ``count`` bytes; (start, end, bytes received)."""
    buf = bytearray(CHUNK)
    got = 0
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(f"{count}\n".encode())
        while n := s.recv_into(buf):
            got += n
    end = time.perf_counter()
    if got != count:
        raise RuntimeError(f"received {got} of {count} bytes through port {port}")
    return start, end, got


def throughput(port: int, count: int, connections: int) -> float:
    """Aggregate MB/s of ``connections`` parallel fetches of ``count`` bytes each."""
    results: list[tuple[float, float, int]] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(connections)

    def one() -> None:
        try:
            gate.wait()
            results.append(fetch(port, count))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    begin, finish = min(r[0] for r in results), max(r[1] for r in results)
    return sum(r[2] for r in results) / (finish - begin) / 1e6


def forward_figures(port: int, single: int, each: int) -> tuple[float, float]:
    """(one connection MB/s, PARALLEL connections aggregate MB/s) through ``port``."""
    fetch(port, MIB)  # warm-up: the whole path is up
    return throughput(port, single, 1), throughput(port, each, PARALLEL)


# --- the tools ---------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a grace period."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
            return


@contextlib.contextmanager
def porthole_forward(server: Server, instance_id: str, remote_port: int) -> Iterator[int]:
    """``porthole forward`` to ``remote_port``; yields the local port it printed."""
    proc = subprocess.Popen([str(BIN / "porthole"), "forward", instance_id, "--remote-port",
                             str(remote_port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=server.env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"porthole forward did not start (printed {line!r})")
        yield int(line)
    finally:
        _stop(proc)


@contextlib.contextmanager
def ssh_forward(sshd: Sshd, remote_port: int) -> Iterator[int]:
    """``ssh -N -L`` to ``remote_port`` through the private sshd; yields the local port."""
    local = free_port()
    proc = subprocess.Popen(["ssh", *sshd.client_options(), "-o", "ExitOnForwardFailure=yes",
                             "-N", "-L", f"{local}:127.0.0.1:{remote_port}",
                             "-p", str(sshd.port), "root@127.0.0.1"],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _ssh_listening(proc, local), 20, "ssh -L to listen")
        yield local
    finally:
        _stop(proc)


def _ssh_listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    if proc.poll() is not None:
        assert proc.stderr is not None
        raise RuntimeError(f"ssh -L exited: {proc.stderr.read().decode(errors='replace')}")
    return _accepts(port)


# --- file copy ---------------------------------------------------------------------------


def make_source(path: Path, mib: int) -> None:
    """``mib`` MiB of incompressible bytes (one random 16 MiB block repeated)."""
    block = os.urandom(16 * MIB)
    with path.open("wb") as f:
        for done in range(0, mib, 16):
            f.write(block[:min(16, mib - done) * MIB])


def timed_copy(argv: list[str], env: dict[str, str] | None, dest: Path, size: int) -> float:
    """Run the copy command; wall-clock MB/s after checking the copy's size, then remove it."""
    try:
        start = time.perf_counter()
        result = subprocess.run(argv, env=env, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=TIMEOUT)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr}")
        if dest.stat().st_size != size:
            raise RuntimeError(f"{dest} has {dest.stat().st_size} bytes, expected {size}")
        return size / seconds / 1e6
    finally:
        dest.unlink(missing_ok=True)


def copy_figures(server: Server, instance_id: str, sshd: Sshd, src: Path, root: Path
                 ) -> tuple[float, float]:
    """(porthole cp MB/s, scp MB/s) of ``src`` to a file under ``root`` on the instance."""
    size = src.stat().st_size
    dest = root / "copy.bin"  # the agent and sshd both run on this machine
    ph = timed_copy([str(BIN / "porthole"), "cp", str(src), f"{instance_id}:{dest}"],
                    server.env(), dest, size)
    scp = timed_copy(["scp", *sshd.client_options(), "-P", str(sshd.port), str(src),
                      f"root@127.0.0.1:{dest}"], None, dest, size)
    return ph, scp


# --- report ------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    porthole: float
    openssh: float


def table(rows: list[Row]) -> str:
    """A plain text table of MB/s figures and their ratio."""
    lines = [f"{'metric':<40} {'porthole':>10} {'openssh':>10} {'ratio':>8}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r.name:<40} {r.porthole:>10.1f} {r.openssh:>10.1f} "
                     f"{r.porthole / r.openssh:>8.2f}")
    lines.append("MB/s = 10^6 bytes/s; ratio = porthole / openssh (higher is better)")
    return "\n".join(lines)


@contextlib.contextmanager
def started(make: Callable[[], Server | Agent | Sshd]) -> Iterator[Server | Agent | Sshd]:
    """Whatever ``make`` starts, stopped on the way out."""
    thing: Server | Agent | Sshd | None = None
    try:
        thing = make()
        yield thing
    finally:
        if thing is not None:
            thing.stop()


def run(root: Path, args: argparse.Namespace) -> list[Row]:
    """Start everything, take every measurement, stop everything."""
    single, each = args.mib * MIB, args.parallel_mib * MIB
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(byte_source())
        server = Server(root)
        stack.enter_context(started(server.start))
        agent = Agent(server, root / "agent")
        stack.enter_context(started(agent.start))
        sshd = Sshd(root / "ssh")
        stack.enter_context(started(sshd.start))
        with porthole_forward(server, agent.instance_id, port) as local:
            ph_fwd = forward_figures(local, single, each)
        with ssh_forward(sshd, port) as local:
            ssh_fwd = forward_figures(local, single, each)
        src = root / "source.bin"
        try:
            make_source(src, args.copy_mib)
            ph_cp, scp = copy_figures(server, agent.instance_id, sshd, src, root)
        finally:
            src.unlink(missing_ok=True)
    return [
        Row(f"forward, 1 conn ({args.mib} MiB)", ph_fwd[0], ssh_fwd[0]),
        Row(f"forward, {PARALLEL} conns x {args.parallel_mib} MiB (aggr.)", ph_fwd[1], ssh_fwd[1]),
        Row(f"copy {args.copy_mib} MiB (cp vs scp)", ph_cp, scp),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, metavar="N",
                        help="MiB through the single forwarded connection")
    parser.add_argument("--parallel-mib", type=int, default=64, metavar="N",
                        help=f"MiB through each of the {PARALLEL} parallel connections")
    parser.add_argument("--copy-mib", type=int, default=1024, metavar="N",
                        help="MiB in the copied file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: sshd and the agent's copies need it")
    began = time.monotonic()
    leave_on_signals()
    with tempfile.TemporaryDirectory(prefix="porthole-bench-", dir="/tmp") as tmp:
        rows = run(Path(tmp), args)
    print(table(rows))
    print(f"wall time {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
