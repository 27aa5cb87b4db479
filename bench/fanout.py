"""Fan-out benchmark: RunCommand on N connected agents, time until every result is stored.

Starts a throwaway deployment, registers up to max(N) agents, and runs them with the agent's
real connection and command code (agent.connection.Agent + agent.commands.CommandRunner),
many per process, each dialling from its own 127.0.0.x source address so that ephemeral
ports never run out. For each N it calls RunCommand (``echo``) on all N instances and polls
DescribeInvocations until every instance's result is stored; it prints the median, minimum
and maximum of several runs.

``--replicas 1,2`` measures each deployment in turn: 1 is one server on SQLite; 2 (or more)
is that many replicas on PostgreSQL and NATS (their standard local ports), the agents given
every replica's URL (each starts at one chosen by its instance id, so they split about
evenly), RunCommand sent to the first replica and results stored by whichever replica holds
the agent. ``--plot FILE`` draws fan-out time against instance count, a line per deployment.

Run as root or not: ``.venv/bin/python bench/fanout.py [--sizes 10,100,1000] [--runs 5]
[--replicas 1,2] [--no-exec] [--plot bench/results/fanout.png]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import (  # noqa: E402
    BenchServer,
    agents_connected,
    check_plotting,
    raise_open_files,
    read_listing,
    register_many,
    run_agents,
    start_worker,
    stop_workers,
)

PER_PROCESS = 250


# --- worker: many agents in one process ----------------------------------------------------


def _answer_at_once(agent) -> None:  # type: ignore[no-untyped-def]
    """--no-exec: reply to each task without starting a process (measures the server, the
    wire and storage without 1,000 process spawns sharing two cores)."""
    from proto.commands import TaskResult, TaskResultAck, TaskRun

    def run(m: TaskRun) -> None:
        now = time.time()
        agent.send(TaskResult(m.task_id, "Success", 0, "", "", b"ok\n", 3, 0, now, now))

    agent.handlers[TaskRun] = run
    agent.handlers[TaskResultAck] = lambda m: None


def worker(list_file: Path, offset: int, no_exec: bool) -> None:
    from agent.commands import CommandRunner

    if os.environ.get("FANOUT_LOG"):
        import logging
        logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("websockets").setLevel(logging.WARNING)
    run_agents(read_listing(list_file), offset, _answer_at_once if no_exec else CommandRunner,
               per_second=50)  # no thundering herd of TLS handshakes


# --- driver --------------------------------------------------------------------------------

Row = tuple[int, float, float, float]
"""(agents, median, min, max) in seconds."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--replicas", default="1",
                        help="deployments to measure, by replica count (1: one server on "
                        "SQLite; more: replicas on PostgreSQL and NATS)")
    parser.add_argument("--no-exec", action="store_true",
                        help="agents answer without running a process")
    parser.add_argument("--plot", type=Path, help="write a PNG of fan-out time against agents")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.offset, args.no_exec)
        return
    check_plotting(args.plot)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, list[Row]] = {}
    for replicas in (int(r) for r in args.replicas.split(",")):
        if os.environ.get("FANOUT_KEEP"):
            root = Path(tempfile.mkdtemp(prefix="porthole-fanout-"))
            results[replicas] = run(root, sizes, args.runs, args.no_exec, replicas)
            continue
        with tempfile.TemporaryDirectory(prefix="porthole-fanout-") as tmp:
            results[replicas] = run(Path(tmp), sizes, args.runs, args.no_exec, replicas)
    mode = "answered without a process (--no-exec)" if args.no_exec else "echo ok"
    print(f"\nRunCommand ({mode}) until every result is stored, {args.runs} runs each")
    print("| replicas | agents | median | min | max |\n|---:|---:|---:|---:|---:|")
    for replicas, rows in results.items():
        for n, med, lo, hi in rows:
            print(f"| {replicas} | {n} | {med:.3f} s | {lo:.3f} s | {hi:.3f} s |")
    if args.plot is not None:
        draw(args.plot, results, mode)
        print(f"plot: {args.plot}")


@contextlib.contextmanager
def deployment(root: Path, replicas: int) -> Any:
    """The servers of one deployment, started; stopped (and a cluster's database dropped)
    on the way out."""
    settings = {"heartbeat_interval": 30.0, "agent_offline_after": 120.0}
    if replicas == 1:
        server = BenchServer(root, log_level=os.environ.get("FANOUT_SERVER_LOG", "INFO"),
                             **settings).start()
        try:
            yield [server]
        finally:
            server.stop()
        return
    from tests.cluster import Cluster

    cluster = Cluster(root, size=replicas, **settings)
    try:
        yield cluster.start().replicas
    finally:
        cluster.close()


def run(root: Path, sizes: list[int], runs: int, no_exec: bool, replicas: int) -> list[Row]:
    from cli.client import Client
    from cli.config import Profile
    from tests.harness import wait_for

    raise_open_files()
    workers: list[subprocess.Popen[bytes]] = []
    with deployment(root, replicas) as servers:
        first = servers[0]
        urls = ",".join(s.url for s in servers)
        try:
            c = Client(Profile(server=first.url, ca_file=str(first.ca_file),
                               access_key_id=first.admin["AccessKeyId"],
                               access_key_secret=first.admin["AccessKeySecret"]), timeout=120)
            total = max(sizes)
            t0 = time.perf_counter()
            dirs = [root / "agents" / f"a{i:04d}" for i in range(total)]
            agents = list(zip(dirs, register_many(first, dirs, threads=4, urls=urls),
                              strict=True))
            print(f"{replicas} replica(s): registered {total} agents in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            rows = []
            for n in sizes:
                stop_workers(workers)
                workers.clear()
                wait_for(lambda: agents_connected(servers) == 0, 120, "agents gone")
                for start in range(0, n, PER_PROCESS):
                    part = agents[start:start + PER_PROCESS][: n - start]
                    workers.append(start_worker(
                        __file__, root / f"workers-{n}-{start}.txt", [d for d, _ in part],
                        start, root / f"worker-{n}-{start}.log",
                        ["--no-exec"] if no_exec else []))
                t0 = time.perf_counter()
                wait_for(lambda n=n: agents_connected(servers) >= n, 600,
                         f"{n} agents connected")
                spread = "/".join(str(agents_connected([s])) for s in servers)
                print(f"N={n}: all connected in {time.perf_counter() - t0:.1f} s "
                      f"(per replica {spread})", flush=True)
                rows.append((n, *fan_out(c, [iid for _, iid in agents[:n]], runs)))
                print(f"N={n}: median {rows[-1][1]:.3f} s (min {rows[-1][2]:.3f}, "
                      f"max {rows[-1][3]:.3f}, {runs} runs)", flush=True)
            return rows
        finally:
            stop_workers(workers)


def fan_out(c: Any, ids: list[str], runs: int) -> tuple[float, float, float]:
    """RunCommand on every instance ``runs`` times; (median, min, max) seconds until every
    result was stored."""
    n = len(ids)
    times = []
    for _ in range(runs):
        start_t = time.perf_counter()
        invoke_id = c.call("RunCommand", InstanceIds=ids, CommandContent="echo ok",
                           Timeout=120)["InvokeId"]
        while True:
            inv = c.call("DescribeInvocations", InvokeId=invoke_id)["Invocations"][0]
            if inv["InvocationStatus"] not in ("Pending", "Running"):
                break
            time.sleep(0.02 if n <= 100 else 0.1)
        times.append(time.perf_counter() - start_t)
        ok = inv["StatusCounts"].get("Success", 0)
        if ok != n:
            print(f"N={n}: only {ok} succeeded: {json.dumps(inv['StatusCounts'])}")
    return statistics.median(times), min(times), max(times)


def draw(path: Path, results: dict[int, list[Row]], mode: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for replicas, rows in results.items():
        label = "one server, SQLite" if replicas == 1 else \
            f"{replicas} replicas, PostgreSQL + NATS"
        ns = [n for n, *_ in rows]
        ax.plot(ns, [med for _, med, _, _ in rows], "o-", label=label)
        ax.fill_between(ns, [lo for _, _, lo, _ in rows], [hi for *_, hi in rows], alpha=0.15)
    ax.axhline(3.0, color="grey", ls=":", lw=1, label="3 s goal at 1,000")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("instances in one RunCommand")
    ax.set_ylabel("seconds until every result is stored")
    ax.set_title(f"fan-out ({mode}; median, band: min to max)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
