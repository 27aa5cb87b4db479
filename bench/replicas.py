"""Cross-replica session benchmark: the same agent reached through the replica that holds it
and through another one, against OpenSSH, in one run.

Starts two ``porthole-server`` replicas on one PostgreSQL database and NATS (both on their
standard local ports), one agent, and a private sshd, all on loopback. Through a local PTY,
as an operator's terminal sees it, it measures keystroke echo round trips (median, p99) and
bulk output throughput (``head -c NM /dev/zero | base64 -w 0``) for each path.

Run as root: ``.venv/bin/python bench/replicas.py [--keystrokes 300] [--bytes 100]``.
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


def table(rows: list[tuple[str, Figures]], ssh: Figures, count: int, mib: int) -> str:
    lines = [f"{'path':<34} {'echo median ms':>15} {'echo p99 ms':>12} {'MiB/s':>8} "
             f"{'vs same':>8} {'vs ssh':>7}"]
    lines.append("-" * len(lines[0]))
    same = rows[0][1].mib_per_s
    for name, f in [*rows, ("OpenSSH (same machine)", ssh)]:
        lines.append(f"{name:<34} {statistics.median(f.echo_ms):>15.3f} {p99(f.echo_ms):>12.3f} "
                     f"{f.mib_per_s:>8.1f} {f.mib_per_s / same:>8.2f} "
                     f"{f.mib_per_s / ssh.mib_per_s:>7.2f}")
    lines.append(f"n={count} keystrokes; bulk = {mib} MiB of zeros, base64 on one line; "
                 "'vs' columns are throughput ratios")
    return "\n".join(lines)


def main() -> int:
    args = session_arguments(__doc__.splitlines()[0])
    began = time.monotonic()
    leave_on_signals()
    sshd = ensure_sshd()
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
            argv = [str(BIN / "porthole"), "session", agent.instance_id]
            rows = []
            for name, server in (("same replica (holds the agent)", same),
                                 ("other replica (over NATS)", other)):
                rows.append((name, measure(argv, server.env(TERM="xterm"), args.keystrokes,
                                           args.bytes)))
        finally:
            if agent is not None:
                agent.stop()
            cluster.close()
        with openssh(sshd, root / "ssh") as (ssh_argv, env):
            ssh = measure(ssh_argv, env, args.keystrokes, args.bytes)
    print(table(rows, ssh, args.keystrokes, args.bytes))
    print(f"wall time {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
