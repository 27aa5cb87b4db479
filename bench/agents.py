"""Agents per server process: N agents against one porthole-server, measured.

Starts a throwaway porthole-server, registers N agents through its HTTP endpoint, and runs
them with the agent's real code (agent.connection.Agent and agent.commands.CommandRunner, as
``porthole-agent run`` does), about 2,000 per worker process, each dialling from one of
127.0.0.2 … 127.0.0.51. It prints:

- the connect storm: seconds until the server counts all N connected (every agent starts at
  once; the agents' own backoff deals with refusals and timeouts), with the server's RSS
  sampled on the way;
- the server's RSS (VmRSS) before and after, and per agent;
- the server's CPU use while idle with N agents heartbeating (utime + stime over 30 s);
- after SIGTERM and a restart on the same port, the seconds until 50, 90, 99 and 100 % of
  the agents are back.

Client and server share the machine, so the bench keeps its own agents from measuring
themselves: the worker processes run at nice 10 (``--nice``), so that the server gets the CPU
it would have on a machine of its own, and each lets at most ``--opening`` (100) of its agents
open a connection at a time (real agents have a CPU each; 2,000 handshakes at once on one
shared core would time out on the client's side).

``.venv/bin/python bench/agents.py [--agents 10000] [--workers W] [--heartbeat S]
[--plot bench/results/agents.png]``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import (  # noqa: E402
    BenchServer,
    check_plotting,
    port_range,
    proc_cpu,
    proc_rss,
    raise_open_files,
    read_listing,
    register_many,
    run_agents,
    start_worker,
    stop_workers,
)

PER_WORKER = 2000
MIB = 1024 * 1024


# --- worker --------------------------------------------------------------------------------


def worker(listing: Path, offset: int, lifetime: float, opening: int) -> None:
    from agent.commands import CommandRunner  # as porthole-agent run: boot report, spool

    logging.basicConfig(level="WARNING", format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.ERROR)
    run_agents(read_listing(listing), offset, CommandRunner, lifetime=lifetime,
               opening=opening)


# --- driver --------------------------------------------------------------------------------


class Sampler:
    """Polls the server's count of connected agents (and its RSS) until a goal is reached."""

    def __init__(self, server: BenchServer) -> None:
        self.server = server
        self.samples: list[tuple[float, int, int]] = []
        """(seconds since start, agents connected, server RSS in bytes)"""

    def until(self, goal: int, timeout: float, t0: float, every: float = 0.25) -> float | None:
        """Seconds from ``t0`` (time.monotonic) until ``goal`` agents are connected, or None
        after ``timeout``."""
        assert self.server.proc is not None
        while time.monotonic() - t0 < timeout:
            if self.server.proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.server.log()[-3000:]}")
            n = self.server.connected()  # -1: too busy to answer within 5 s
            if n >= 0:
                now = time.monotonic() - t0
                self.samples.append((now, n, proc_rss(self.server.proc.pid)))
                if n >= goal:
                    return now
                time.sleep(every)
        return None


def first_at(samples: list[tuple[float, int, int]], count: int) -> float | None:
    return next((t for t, n, _ in samples if n >= count), None)


def stop_server(server: BenchServer, timeout: float = 120) -> float:
    """SIGTERM and wait for the exit; returns how long that took."""
    assert server.proc is not None
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"the server did not exit within {timeout:.0f} s of SIGTERM; killed it")
        server.proc.kill()
        server.proc.wait()
    server.proc = None
    return time.monotonic() - t0


def log_lines(path: Path, needle: str, start: int = 0) -> int:
    """Lines with ``needle`` in a log from byte ``start`` on."""
    try:
        with path.open("rb") as f:
            f.seek(start)
            return sum(needle.encode() in line for line in f)
    except OSError:
        return 0


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def run(root: Path, n: int, workers_n: int, heartbeat: float, idle_seconds: float,
        plot: Path | None, storm_timeout: float, restart_timeout: float, opening: int,
        nice: int) -> None:
    limit = raise_open_files(max(65536, n + 4096))
    low, high = port_range()
    print(f"{n} agents, {workers_n} worker processes, RLIMIT_NOFILE {limit}, "
          f"ip_local_port_range {low}-{high} ({high - low + 1} ports per source address), "
          f"{os.cpu_count()} cores", flush=True)
    if limit < n + 100:
        raise SystemExit(f"RLIMIT_NOFILE {limit} is too low for {n} agents; run as root or "
                         "raise the hard limit")
    server = BenchServer(root, heartbeat_interval=heartbeat, agent_offline_after=heartbeat * 3)
    server.start()
    assert server.proc is not None
    print(f"server pid {server.proc.pid}, {server.url}, data in {root}", flush=True)
    workers: list[subprocess.Popen[bytes]] = []
    lifetime = storm_timeout + restart_timeout + idle_seconds + 600
    try:
        dirs = [root / "agents" / f"a{i:05d}" for i in range(n)]
        todo = [d for d in dirs if not (d / "agent.json").exists()]
        t0 = time.monotonic()
        register_many(server, todo, threads=8)
        print(f"registered {len(todo)} agents in {time.monotonic() - t0:.1f} s "
              f"(real HTTP endpoint, 8 at a time; {n - len(todo)} from an earlier run)",
              flush=True)

        rss_before = proc_rss(server.proc.pid)
        cpu_before = proc_cpu(server.proc.pid)
        log_start = log_size(server.log_path)
        sampler = Sampler(server)
        t0 = time.monotonic()
        per = math.ceil(n / workers_n)
        for w, start in enumerate(range(0, n, per)):
            workers.append(start_worker(
                __file__, root / f"worker-{w}.txt", dirs[start:start + per], start,
                root / f"worker-{w}.log",
                ["--lifetime", str(lifetime), "--opening", str(opening)], nice=nice))
        storm = sampler.until(n, storm_timeout, t0)
        storm_cpu = proc_cpu(server.proc.pid) - cpu_before
        worker_logs = [root / f"worker-{w}.log" for w in range(len(workers))]
        failed = sum(log_lines(p, "failed:") for p in worker_logs)
        timeouts = log_lines(server.log_path, "handshake timed out", log_start)
        if storm is None:
            got = sampler.samples[-1][1] if sampler.samples else 0
            print(f"connect storm: only {got} of {n} connected after {storm_timeout:.0f} s")
        else:
            print(f"connect storm: all {n} connected in {storm:.1f} s "
                  f"({failed} failed attempts retried by the agents, "
                  f"{timeouts} server handshake timeouts); server CPU {storm_cpu:.1f} s, "
                  f"{storm_cpu / n * 1000:.1f} ms per agent", flush=True)
        steps = [(k * n // 10, first_at(sampler.samples, k * n // 10)) for k in range(1, 11)]
        print("  connected   after   server RSS")
        for count, t in steps:
            if t is not None:
                rss = next(r for tt, c, r in sampler.samples if tt == t)
                print(f"  {count:9d} {t:7.1f} s {rss / MIB:8.0f} MiB")

        time.sleep(min(5.0, heartbeat))  # let the storm's garbage settle
        rss_after = proc_rss(server.proc.pid)
        print(f"server RSS: {rss_before / MIB:.0f} MiB before, {rss_after / MIB:.0f} MiB with "
              f"{n} agents, {(rss_after - rss_before) / n / 1024:.1f} KiB per agent", flush=True)

        cpu0, t_idle = proc_cpu(server.proc.pid), time.monotonic()
        time.sleep(idle_seconds)
        cpu1, t_idle = proc_cpu(server.proc.pid), time.monotonic() - t_idle
        idle_cpu = (cpu1 - cpu0) / t_idle * 100
        still = server.connected()
        print(f"server CPU while idle: {idle_cpu:.1f} % of one core over {t_idle:.0f} s "
              f"(heartbeat every {heartbeat:.0f} s; {still} agents connected)", flush=True)

        down = stop_server(server)
        print(f"SIGTERM: the server exited in {down:.1f} s", flush=True)
        restart = Sampler(server)
        t0 = time.monotonic()
        server.start()
        back = restart.until(n, restart_timeout, t0, every=0.2)
        marks = {p: first_at(restart.samples, math.ceil(n * p / 100)) for p in (50, 90, 99, 100)}
        text = ", ".join(f"{p} % in {t:.1f} s" if t is not None else f"{p} %: not within "
                         f"{restart_timeout:.0f} s" for p, t in marks.items())
        print(f"after the restart (counted from the new server's start): {text}", flush=True)
        if back is None:
            print(f"  {restart.samples[-1][1] if restart.samples else 0} of {n} back")

        summary = {
            "agents": n, "workers": len(workers), "heartbeat": heartbeat, "storm_s": storm,
            "failed_attempts": failed, "handshake_timeouts": timeouts, "storm_cpu_s": storm_cpu,
            "rss_before_mib": rss_before / MIB, "rss_after_mib": rss_after / MIB,
            "rss_per_agent_kib": (rss_after - rss_before) / n / 1024,
            "idle_cpu_percent": idle_cpu, "shutdown_s": down,
            "back_s": {str(p): t for p, t in marks.items()},
        }
        print(json.dumps(summary))
        print("\n| agents | connect storm | server RSS | per agent | idle CPU | 99 % back |")
        print("|---:|---:|---:|---:|---:|---:|")
        fmt = (lambda t: f"{t:.1f} s" if t is not None else "—")  # noqa: E731
        print(f"| {n} | {fmt(storm)} | {rss_after / MIB:.0f} MiB | "
              f"{(rss_after - rss_before) / n / 1024:.1f} KiB | {idle_cpu:.1f} % | "
              f"{fmt(marks[99])} |")
        if plot is not None:
            draw(plot, n, sampler.samples, restart.samples)
            print(f"plot: {plot}")
    finally:
        stop_workers(workers)
        if server.proc is not None:
            stop_server(server, 60)


def draw(path: Path, n: int, storm: list[tuple[float, int, int]],
         restart: list[tuple[float, int, int]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot([c for _, c, _ in storm], [r / MIB for _, _, r in storm], ".-", ms=3)
    left.set_xlabel("agents connected")
    left.set_ylabel("server RSS (MiB)")
    left.set_title(f"connect storm of {n} agents")
    left.grid(alpha=0.3)
    right.plot([t for t, _, _ in restart], [c for _, c, _ in restart], ".-", ms=3)
    right.axhline(n * 0.99, color="grey", ls=":", lw=1, label="99 %")
    right.set_xlabel("seconds since the server restarted")
    right.set_ylabel("agents connected")
    right.set_title("reconnection after SIGTERM and restart")
    right.legend(loc="lower right")
    right.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=0,
                        help=f"agent processes (default: one per {PER_WORKER} agents)")
    parser.add_argument("--heartbeat", type=float, default=20.0,
                        help="the server's heartbeat interval in seconds")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--storm-timeout", type=float, default=600.0)
    parser.add_argument("--restart-timeout", type=float, default=300.0)
    parser.add_argument("--opening", type=int, default=100,
                        help="connections each worker process opens at a time (0: no limit)")
    parser.add_argument("--nice", type=int, default=10,
                        help="run the agent processes this much below the server's priority")
    parser.add_argument("--plot", type=Path, help="write a PNG: RSS against agents, and the "
                        "reconnection curve")
    parser.add_argument("--data", type=Path, help="keep the server's data and the agents "
                        "here, and use those of an earlier run found there")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lifetime", type=float, default=3600.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.offset, args.lifetime, args.opening)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what was started
    check_plotting(args.plot)
    workers_n = args.workers or max(1, math.ceil(args.agents / PER_WORKER))
    if args.data:
        args.data.mkdir(parents=True, exist_ok=True)
        run(args.data.resolve(), args.agents, workers_n, args.heartbeat, args.idle_seconds,
            args.plot, args.storm_timeout, args.restart_timeout, args.opening, args.nice)
        return
    with tempfile.TemporaryDirectory(prefix="porthole-agents-") as tmp:
        run(Path(tmp), args.agents, workers_n, args.heartbeat, args.idle_seconds, args.plot,
            args.storm_timeout, args.restart_timeout, args.opening, args.nice)


if __name__ == "__main__":
    main()
