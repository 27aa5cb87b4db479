"""Several server replicas on loopback ports sharing one database and one NATS server."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.harness import BIN, Agent, Server, free_port, wait_for

NATS_URL = "nats://127.0.0.1:4222"
POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432"
SHARED_FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "master.key",
                "admin.json", "server.yaml")


def psql(sql: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-q",
                    "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True)


class Replica(Server):
    """A replica made from the first one's data dir, as an operator would copy it."""

    def __init__(self, root: Path, first: Server, replica_id: str) -> None:
        self.data_dir = root / "server"
        self.data_dir.mkdir(parents=True)
        for name in SHARED_FILES:
            if (first.data_dir / name).exists():
                shutil.copy2(first.data_dir / name, self.data_dir / name)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self.proc = None
        self.agents_depend = False
        config_file = self.data_dir / "server.yaml"
        config = yaml.safe_load(config_file.read_text())
        config.update(listen=f"127.0.0.1:{self.port}", replica_id=replica_id)
        config_file.write_text(yaml.safe_dump(config))
        self.admin = json.loads((self.data_dir / "admin.json").read_text())
        self.ca_file = self.data_dir / "ca.pem"


class Cluster:
    """``size`` replicas r0, r1, … on a PostgreSQL database of their own (dropped by
    :meth:`close`) and a NATS subject prefix of their own."""

    def __init__(self, root: Path, size: int = 2, hostnames: tuple[str, ...] = (),
                 **settings: Any) -> None:
        self.prefix = "pht" + uuid.uuid4().hex[:12]
        self.database = f"porthole_t_{uuid.uuid4().hex}"
        settings = {"nats_url": NATS_URL, "nats_subject_prefix": self.prefix,
                    "replica_id": "r0", "heartbeat_interval": 2.0,
                    "agent_offline_after": 6.0, **settings}
        psql(f'CREATE DATABASE "{self.database}"')
        try:
            first = Server(root / "r0", init_args=("--database-url",
                                                   f"{POSTGRES}/{self.database}"),
                           hostnames=hostnames, **settings)
        except BaseException:
            psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            raise
        self.replicas: list[Server] = [first]
        for n in range(1, size):
            self.replicas.append(Replica(root / f"r{n}", first, f"r{n}"))

    def start(self) -> Cluster:
        for replica in self.replicas:
            replica.start()
        return self

    @property
    def urls(self) -> str:
        return ",".join(r.url for r in self.replicas)

    def agent(self, state_dir: Path, on: int = 0, server: str = "",
              prefix: list[str] | None = None) -> Agent:
        """An agent registered through the ``on``-th replica and given every replica's URL
        (it starts at one of them chosen by its instance id), or ``server``; run under
        ``prefix``."""
        first = self.replicas[on]
        urls = [r.url for r in self.replicas[on:] + self.replicas[:on]]
        activation = first.activation(count=1)
        result = subprocess.run(
            [*(prefix or []), str(BIN / "porthole-agent"), "register",
             "--server", server or ",".join(urls),
             "--ca-file", str(first.ca_file), "--activation-id", activation["ActivationId"],
             "--activation-code", activation["ActivationCode"], "--region", "local",
             "--state-dir", str(state_dir), "--output", "json"],
            capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"register failed: {result.stderr}")
        agent = Agent.__new__(Agent)
        agent.server, agent.prefix, agent.state_dir = first, prefix or [], state_dir
        agent.log_path, agent.proc = state_dir.with_suffix(".log"), None
        agent.instance_id = json.loads(result.stdout)["InstanceId"]
        return agent

    def by_id(self, replica_id: str) -> Server:
        return self.replicas[int(replica_id[1:])]

    def replica_id(self, replica: Server) -> str:
        return f"r{self.replicas.index(replica)}"

    def others(self, replica_id: str) -> list[Server]:
        return [r for n, r in enumerate(self.replicas) if f"r{n}" != replica_id]

    def holder(self, instance_id: str) -> str | None:
        """The replica that holds the agent, as the database says (None: offline)."""
        live = next(r for r in self.replicas if r.proc is not None)
        row = live.instance(instance_id)
        return row.get("Replica") if row and row["AgentStatus"] == "Online" else None

    def wait_held(self, instance_id: str, not_by: str = "", timeout: float = 30) -> str:
        return wait_for(lambda: (h := self.holder(instance_id)) and h != not_by and h, timeout,
                        f"{instance_id} held by a replica other than {not_by or 'none'}")

    def close(self) -> None:
        for replica in self.replicas:
            replica.stop()
        psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
