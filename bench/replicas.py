"""Cross-replica session benchmark: the same agent reached through the replica that holds it
and through another one, against OpenSSH, in one run.

Starts two ``porthole-server`` replicas on one PostgreSQL database and NATS (both on their
standard local ports), one agent, and a private sshd, all on loopback. Through a local PTY,
as an operator's terminal sees it, it measures keystroke echo round trips (median, p99) and
bulk output throughput (``head -c NM /dev/zero | base64 -w 0``) for each path. Each path is
measured ``--rounds`` times, interleaved (same, other, OpenSSH, then the next round in
another order), so that the machine's drift touches every path alike; throughput is the
median of the rounds, and each round's cross/same ratio is printed too.

Run as root: ``.venv/bin/python bench/replicas.py [--keystrokes 300] [--bytes 100]
[--rounds 3]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.session import (  # noqa: E402
    Figures,
    ensure_sshd,
    leave_on_signals,
    measure,
    openssh,
    p99,
    session_arguments,
)
from tests.cluster import Cluster  # noqa: E402
from tests.harness import BIN  # noqa: E402

PATHS = ("same replica (holds the agent)", "other replica (over NATS)",
         "OpenSSH (same machine)")


def table(results: dict[str, list[Figures]], count: int, mib: int) -> str:
    same, _, ssh = (statistics.median(f.mib_per_s for f in results[p]) for p in PATHS)
    lines = [f"{'path':<34} {'echo median ms':>15} {'echo p99 ms':>12} {'MiB/s':>8} "
             f"{'vs same':>8} {'vs ssh':>7}"]
    lines.append("-" * len(lines[0]))
    for name in PATHS:
        echo = [ms for f in results[name] for ms in f.echo_ms]
        rate = statistics.median(f.mib_per_s for f in results[name])
        lines.append(f"{name:<34} {statistics.median(echo):>15.3f} {p99(echo):>12.3f} "
                     f"{rate:>8.1f} {rate / same:>8.2f} {rate / ssh:>7.2f}")
    ratios = [o.mib_per_s / s.mib_per_s for s, o in zip(results[PATHS[0]], results[PATHS[1]],
                                                        strict=True)]
    lines.append(f"other/same throughput by round: {', '.join(f'{r:.2f}' for r in ratios)}")
    lines.append(f"{len(ratios)} rounds of n={count} keystrokes and {mib} MiB of zeros (base64 on "
                 "one line) per path; MiB/s is the median of the rounds, 'vs' columns are "
                 "throughput ratios")
    return "\n".join(lines)


def main() -> int:
    args = session_arguments(__doc__.splitlines()[0], rounds=3)
    began = time.monotonic()
    leave_on_signals()
    sshd = ensure_sshd()
    results: dict[str, list[Figures]] = {name: [] for name in PATHS}
    with tempfile.TemporaryDirectory(prefix="porthole-bench-") as tmp:
        root = Path(tmp)
        cluster = Cluster(root, size=2, heartbeat_interval=20.0, agent_offline_after=60.0)
        agent = None
        try:
            cluster.start()
            agent = cluster.agent(root / "agent")
            agent.start(wait_online=False)
            holder = cluster.wait_held(agent.instance_id)
            same, other = cluster.by_id(holder), cluster.others(holder)[0]
            porthole = [str(BIN / "porthole"), "session", agent.instance_id]
            with openssh(sshd, root / "ssh") as (ssh_argv, ssh_env):
                runs = {PATHS[0]: (porthole, same.env(TERM="xterm")),
                        PATHS[1]: (porthole, other.env(TERM="xterm")),
                        PATHS[2]: (ssh_argv, ssh_env)}
                for n in range(args.rounds):
                    order = PATHS[n % 3:] + PATHS[:n % 3]
                    for name in order:
                        argv, env = runs[name]
                        results[name].append(measure(argv, env, args.keystrokes, args.bytes))
                        print(f"round {n + 1}: {name}: "
                              f"{results[name][-1].mib_per_s:.1f} MiB/s", flush=True)
        finally:
            if agent is not None:
                agent.stop()
            cluster.close()
    print(table(results, args.keystrokes, args.bytes))
    print(f"wall time {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
