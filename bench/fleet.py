"""Shared by the benchmarks that run many agents: a throwaway server, registration, and
worker processes each running many agents with the agent's real connection code.

Each agent dials from its own 127.0.0.x source address (127.0.0.2 … 127.0.0.51), so that
tens of thousands of loopback connections never run out of ephemeral ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import BIN, Server, wait_for  # noqa: E402

SOURCE_ADDRESSES = 50
"""Agents are spread over 127.0.0.2 … 127.0.0.51 as their source address."""


def source_address(i: int) -> str:
    return f"127.0.0.{2 + i % SOURCE_ADDRESSES}"


def raise_open_files(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (inherited by the server and workers started afterwards); as
    root the hard limit too, up to fs.nr_open. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want and os.geteuid() == 0:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = want
        hard = min(want, nr_open)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        return new
    return soft


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def port_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


# --- server --------------------------------------------------------------------------------


class BenchServer(Server):
    """tests.harness.Server with the log level settable and no move to another port (agents
    registered against this one must find it again after a restart)."""

    def __init__(self, root: Path, log_level: str = "INFO", **settings: Any) -> None:
        self.log_level = log_level
        if not (root / "server" / "server.yaml").exists():
            super().__init__(root, **settings)
            return
        # a data directory of an earlier run (its agents registered against its port)
        import json

        import yaml

        self.data_dir = root / "server"
        config_file = self.data_dir / "server.yaml"
        config = yaml.safe_load(config_file.read_text())
        config.update(settings)
        config_file.write_text(yaml.safe_dump(config))
        host, _, port = config["listen"].rpartition(":")
        self.port = int(port)
        self.url = f"https://{host}:{self.port}"
        self.log_path = root / "server.log"
        self.proc = None
        self.agents_depend = True
        self.admin = json.loads((self.data_dir / "admin.json").read_text())
        self.ca_file = self.data_dir / "ca.pem"

    def start(self) -> BenchServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(BIN / "porthole-server"), "run", "--data-dir", str(self.data_dir),
             "--log-level", self.log_level],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        wait_for(self.healthy, 60, "server health")
        return self


def agents_connected(servers: Sequence[Server]) -> int:
    """Agents connected to these servers, as each counts its own; -1 when one of them did
    not answer (too busy), so that no wait for a count takes it for 0."""
    counts = [server.connected() for server in servers]
    return -1 if -1 in counts else sum(counts)


def check_plotting(plot: Path | None) -> None:
    """Before a long run: --plot needs matplotlib (the "bench" extra)."""
    if plot is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("--plot needs matplotlib: run .venv/bin/pip install -e '.[bench]'"
                         ) from None


def proc_rss(pid: int) -> int:
    """Resident set size of a process in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_cpu(pid: int) -> float:
    """User plus system CPU seconds a process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- registration --------------------------------------------------------------------------


ACTIVATION_LIMIT = 1000
"""The most registrations one activation allows."""


def activations(server: Server, count: int, region: str = "local") -> list[dict[str, Any]]:
    """Enough activations for ``count`` registrations."""
    return [server.cli_json("activation", "create", "--region", region, "--count",
                            str(min(ACTIVATION_LIMIT, count - start)), "--expires", "24h")
            for start in range(0, count, ACTIVATION_LIMIT)]


def register_many(server: Server, directories: Sequence[Path], region: str = "local",
                  threads: int = 8, urls: str = "") -> list[str]:
    """Register one agent per directory through the real HTTP endpoint, several at a time;
    returns the instance ids in the same order. ``urls`` (comma-separated, default the
    server's own) is what the agents are told to dial."""
    from agent.register import register

    acts = activations(server, len(directories), region)

    def one(i: int) -> str:
        act = acts[i // ACTIVATION_LIMIT]
        return register(urls or server.url, server.ca_file, act["ActivationId"],
                        act["ActivationCode"], region, directories[i])

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(len(directories))))


# --- workers: many agents in one process ---------------------------------------------------


AgentSetup = Callable[[Any], None]
"""Called with each agent.connection.Agent before it starts (e.g. to add command handlers)."""


class _Gated:
    """``async with connect(...)`` that waits for a slot of ``gate`` while opening."""

    def __init__(self, opening: Any, gate: asyncio.Semaphore) -> None:
        self.opening = opening
        self.gate = gate

    async def __aenter__(self) -> Any:
        async with self.gate:
            return await self.opening.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        return await self.opening.__aexit__(*exc)


def run_agents(directories: Sequence[Path], offset: int, setup: AgentSetup | None = None,
               per_second: float = 0.0, lifetime: float = 3600.0, opening: int = 0) -> None:
    """Run one agent per state directory in this process until the parent process goes away
    or ``lifetime`` seconds have passed. Agent ``i`` dials from ``source_address(offset+i)``.
    ``per_second`` > 0 spreads the starts; 0 starts them all at once. ``opening`` > 0 lets
    at most that many agents of this process open their connection (TCP, TLS and WebSocket
    handshakes) at a time: real agents each have a CPU of their own, these share one, and
    without a limit they would time out on their own side, not the server's."""
    import agent.connection as connection
    from agent.config import AgentConfig
    from agent.state import AgentState

    source: contextvars.ContextVar[str] = contextvars.ContextVar("source")
    real_connect = connection.connect
    gate: asyncio.Semaphore | None = None

    def connect_from(*args: Any, **kwargs: Any) -> Any:
        opening_ = real_connect(*args, local_addr=(source.get(), 0), **kwargs)
        return _Gated(opening_, gate) if gate is not None else opening_

    connection.connect = connect_from  # type: ignore[assignment]
    parent = os.getppid()

    async def main() -> None:
        nonlocal gate
        if opening > 0:
            gate = asyncio.Semaphore(opening)
        tasks = []
        started = time.monotonic()
        for i, d in enumerate(directories):
            agent = connection.Agent(AgentState.load(d), AgentConfig())
            if setup is not None:
                setup(agent)
            source.set(source_address(offset + i))  # copied into the task's context
            tasks.append(asyncio.create_task(agent.run_forever()))
            if per_second > 0:
                await asyncio.sleep(max(0.0, started + (i + 1) / per_second - time.monotonic()))
        deadline = started + lifetime
        while os.getppid() == parent and time.monotonic() < deadline:
            await asyncio.sleep(1)
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def start_worker(script: str, listing: Path, directories: Sequence[Path], offset: int,
                 log_path: Path, extra: Sequence[str] = (), nice: int = 0
                 ) -> subprocess.Popen[bytes]:
    """Start ``script --worker LISTING --offset OFFSET [extra]`` for these state directories,
    ``nice`` steps below this process's priority."""
    listing.write_text("\n".join(str(d) for d in directories))
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the process

    def prepare() -> None:
        die_with_parent()
        if nice:
            os.nice(nice)

    return subprocess.Popen(
        [sys.executable, script, "--worker", str(listing), "--offset", str(offset), *extra],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=prepare,
        env={**os.environ, "PYTHONPATH": str(REPO)})


def read_listing(listing: Path) -> list[Path]:
    return [Path(p) for p in listing.read_text().split()]


def stop_workers(workers: Sequence[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.terminate()
    for w in workers:
        try:
            w.wait(10)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
