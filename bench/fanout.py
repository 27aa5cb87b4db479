"""Fan-out benchmark: RunCommand on N connected agents, time until every result is stored.

Starts a throwaway porthole-server, registers up to max(N) agents, and runs them with the
agent's real connection and command code (agent.connection.Agent + agent.commands.
CommandRunner), many per process, each dialling from its own 127.0.0.x source address so that
ephemeral ports never run out. For each N it calls RunCommand (``echo``) on all N instances
and polls DescribeInvocations until every instance's result is stored; it prints the median,
minimum and maximum of several runs.

Run as root or not: ``.venv/bin/python bench/fanout.py [--sizes 10,100,1000] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import (  # noqa: E402
    BenchServer,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-exec", action="store_true",
                        help="agents answer without running a process")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.offset, args.no_exec)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    if os.environ.get("FANOUT_KEEP"):
        run(Path(tempfile.mkdtemp(prefix="porthole-fanout-")), sizes, args.runs, args.no_exec)
        return
    with tempfile.TemporaryDirectory(prefix="porthole-fanout-") as tmp:
        run(Path(tmp), sizes, args.runs, args.no_exec)


def run(root: Path, sizes: list[int], runs: int, no_exec: bool) -> None:
    from cli.client import Client
    from cli.config import Profile
    from tests.harness import wait_for

    raise_open_files()
    server = BenchServer(root, log_level=os.environ.get("FANOUT_SERVER_LOG", "INFO"),
                         heartbeat_interval=30.0, agent_offline_after=120.0).start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        c = Client(Profile(server=server.url, ca_file=str(server.ca_file),
                           access_key_id=server.admin["AccessKeyId"],
                           access_key_secret=server.admin["AccessKeySecret"]), timeout=120)
        total = max(sizes)
        t0 = time.perf_counter()
        dirs = [root / "agents" / f"a{i:04d}" for i in range(total)]
        agents = list(zip(dirs, register_many(server, dirs, threads=4), strict=True))
        print(f"registered {total} agents in {time.perf_counter() - t0:.1f} s", flush=True)
        rows = []
        for n in sizes:
            stop_workers(workers)
            workers.clear()
            wait_for(lambda: server.connected() == 0, 120, "agents gone")
            for start in range(0, n, PER_PROCESS):
                part = agents[start:start + PER_PROCESS][: n - start]
                workers.append(start_worker(
                    __file__, root / f"workers-{n}-{start}.txt", [d for d, _ in part], start,
                    root / f"worker-{n}-{start}.log", ["--no-exec"] if no_exec else []))
            t0 = time.perf_counter()
            wait_for(lambda n=n: server.connected() >= n, 600, f"{n} agents connected")
            print(f"N={n}: all connected in {time.perf_counter() - t0:.1f} s", flush=True)
            ids = [iid for _, iid in agents[:n]]
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
                elapsed = time.perf_counter() - start_t
                ok = inv["StatusCounts"].get("Success", 0)
                if ok != n:
                    print(f"N={n}: only {ok} succeeded: {json.dumps(inv['StatusCounts'])}")
                times.append(elapsed)
            rows.append((n, statistics.median(times), min(times), max(times)))
            print(f"N={n}: median {statistics.median(times):.3f} s "
                  f"(min {min(times):.3f}, max {max(times):.3f}, {runs} runs)", flush=True)
        print("\n| agents | median | min | max |\n|---:|---:|---:|---:|")
        for n, med, lo, hi in rows:
            print(f"| {n} | {med:.3f} s | {lo:.3f} s | {hi:.3f} s |")
    finally:
        stop_workers(workers)
        server.stop()


if __name__ == "__main__":
    main()
