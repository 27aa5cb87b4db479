"""The agent's own configuration: ``agent.yaml`` in its state directory (optional)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

CONFIG_FILE = "agent.yaml"


class AgentConfigError(Exception):
    """agent.yaml is invalid; str() names the file and the key."""


@dataclass
class AgentConfig:
    allowed_users: list[str] = field(default_factory=lambda: ["*"])
    """Local users commands and sessions may run as (shell wildcards), whatever the server
    says: defence in depth against a compromised server or a too-broad policy."""
    session_user: str = "porthole-user"
    session_user_sudo: bool = False
    resume_timeout: float = 60.0
    """Seconds a session survives without the server before it is ended."""
    upgrade_check_interval: float = 30.0
    """Seconds between checks for an upgraded agent package (then it restarts); 0: never."""
    allow_link_local_forwarding: bool = False
    """Port forwarding to link-local and cloud metadata addresses is refused unless true."""
    state_dir: Path | None = field(default=None, init=False, repr=False, compare=False)
    """The state directory this configuration was loaded from (not a key of agent.yaml)."""

    def allows(self, user: str) -> bool:
        return any(fnmatch.fnmatchcase(user, pattern) for pattern in self.allowed_users)

    @classmethod
    def load(cls, state_dir: Path) -> AgentConfig:
        path = state_dir / CONFIG_FILE
        if not path.exists():
            config = cls()
            config.state_dir = state_dir
            return config
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise AgentConfigError(f"{path}: {exc}".replace("\n", " ")) from None
        if not isinstance(raw, dict):
            raise AgentConfigError(f"{path}: must be a mapping of keys to values")
        known = {f.name: f for f in fields(cls) if f.init}
        for key in raw:
            if key not in known:
                raise AgentConfigError(f"{path}: unknown key {key!r}")
        config = cls(**raw)
        if not isinstance(config.allowed_users, list) or not all(
            isinstance(u, str) for u in config.allowed_users
        ):
            raise AgentConfigError(f"{path}: allowed_users must be a list of user names")
        for key in ("session_user_sudo", "allow_link_local_forwarding"):
            if not isinstance(getattr(config, key), bool):
                raise AgentConfigError(f"{path}: {key} must be true or false")
        if not isinstance(config.resume_timeout, int | float) or config.resume_timeout <= 0:
            raise AgentConfigError(f"{path}: resume_timeout must be a positive number")
        if not isinstance(config.upgrade_check_interval, int | float) \
                or config.upgrade_check_interval < 0:
            raise AgentConfigError(f"{path}: upgrade_check_interval must be 0 or more seconds")
        config.state_dir = state_dir
        return config
