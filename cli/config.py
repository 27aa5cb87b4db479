"""CLI profiles in ``~/.porthole/config`` (INI), overridden by PORTHOLE_* environment variables."""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, fields
from pathlib import Path

ENV = {
    "server": "PORTHOLE_SERVER",
    "ca_file": "PORTHOLE_CA_FILE",
    "access_key_id": "PORTHOLE_ACCESS_KEY_ID",
    "access_key_secret": "PORTHOLE_ACCESS_KEY_SECRET",
    "region": "PORTHOLE_REGION",
}


class ConfigError(Exception):
    """Missing or unreadable configuration; str() says what to do."""


@dataclass
class Profile:
    server: str = ""
    ca_file: str = ""
    access_key_id: str = ""
    access_key_secret: str = ""
    region: str = ""

    def require(self) -> Profile:
        missing = [f.name for f in fields(self)
                   if f.name in ("server", "access_key_id", "access_key_secret")
                   and not getattr(self, f.name)]
        if missing:
            raise ConfigError(
                f"no {', '.join(missing)} configured; run `porthole configure` or set "
                + ", ".join(ENV[m] for m in missing)
            )
        return self


def config_path() -> Path:
    return Path(os.environ.get("PORTHOLE_CONFIG", Path.home() / ".porthole" / "config"))


def load_profile(name: str = "default") -> Profile:
    profile = Profile()
    path = config_path()
    if path.exists():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise ConfigError(f"{path} is not a valid config file: {exc}".splitlines()[0]) from None
        if parser.has_section(name):
            for f in fields(profile):
                setattr(profile, f.name, parser.get(name, f.name, fallback=""))
        elif name != "default":
            raise ConfigError(f"profile {name!r} is not in {path}; run `porthole configure "
                              f"--profile {name}`")
    for key, var in ENV.items():
        if os.environ.get(var):
            setattr(profile, key, os.environ[var])
    return profile


def save_profile(profile: Profile, name: str = "default") -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    parser = configparser.ConfigParser(interpolation=None)
    if path.exists():
        parser.read(path)
    parser[name] = {f.name: getattr(profile, f.name) for f in fields(profile)}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        parser.write(f)
    os.replace(tmp, path)
    return path
