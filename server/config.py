"""Server configuration: ``server.yaml`` in the data directory."""

from __future__ import annotations

import dataclasses
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REGION_RE = re.compile(r"^[a-z][a-z0-9-]{1,40}$")
ACCOUNT_RE = re.compile(r"^[0-9]{6,20}$")


class ConfigError(Exception):
    """A configuration problem a user can fix; str() is one line saying what to do."""


@dataclass
class ServerConfig:
    data_dir: Path
    account_id: str = "1000000000000000"
    regions: list[str] = field(default_factory=lambda: ["local"])
    listen: str = "127.0.0.1:8443"
    hostnames: list[str] = field(default_factory=list)
    database_url: str = ""  # default: sqlite in the data dir
    heartbeat_interval: float = 20.0
    agent_offline_after: float = 60.0
    session_resume_timeout: float = 60.0
    record_input: bool = False
    tls_cert: str = "server.pem"
    tls_key: str = "server-key.pem"
    nats_url: str = ""  # empty: one server; set: a replica reaching the others over NATS
    nats_subject_prefix: str = "porthole"
    replica_id: str = ""  # default: HOSTNAME-PORT

    @property
    def replica(self) -> str:
        if self.replica_id:
            return self.replica_id
        port = self.listen_address()[1]
        return re.sub(r"[^A-Za-z0-9_-]", "-", f"{socket.gethostname()}-{port}")[:64]

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.yaml"

    def path(self, name: str) -> Path:
        return self.data_dir / name

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'porthole.db'}"

    def listen_address(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"listen address {self.listen!r} is not HOST:PORT")
        return host.strip("[]") or "0.0.0.0", int(port)

    def save(self) -> None:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "data_dir"}
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))

    @classmethod
    def load(cls, data_dir: Path) -> ServerConfig:
        path = data_dir / "server.yaml"
        if not path.exists():
            raise ConfigError(
                f"{data_dir} is not an initialised data directory; "
                f"run: porthole-server init --data-dir {data_dir}"
            )
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}".replace("\n", " ")) from None
        known = {f.name for f in dataclasses.fields(cls)} - {"data_dir"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        config = cls(data_dir=data_dir, **raw)
        config.validate()
        return config

    def validate(self) -> None:
        if not ACCOUNT_RE.match(str(self.account_id)):
            raise ConfigError(f"account_id {self.account_id!r} must be 6 to 20 digits")
        for region in self.regions:
            if not REGION_RE.match(region):
                raise ConfigError(f"region {region!r} must be lowercase letters, digits, '-'")
        if not self.regions:
            raise ConfigError("at least one region is required")
        if self.heartbeat_interval <= 0 or self.agent_offline_after <= self.heartbeat_interval:
            raise ConfigError("agent_offline_after must be longer than heartbeat_interval")
        if self.session_resume_timeout <= 0:
            raise ConfigError("session_resume_timeout must be positive")
        self.listen_address()
        if self.replica_id and not re.match(r"^[A-Za-z0-9_-]{1,64}$", self.replica_id):
            raise ConfigError(f"replica_id {self.replica_id!r} may hold only letters, digits, "
                              "'-' and '_' (at most 64)")
        if self.nats_url and not re.match(r"^(nats|tls)://", self.nats_url):
            raise ConfigError(f"nats_url {self.nats_url!r} must start with nats:// or tls://")
