"""CLI profiles in ``~/.porthole/config`` (INI), overridden by PORTHOLE_* environment variables."""

from __future__ import annotations

import configparser
import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

ENV = {
    "server": "PORTHOLE_SERVER",
    "ca_file": "PORTHOLE_CA_FILE",
    "access_key_id": "PORTHOLE_ACCESS_KEY_ID",
    "access_key_secret": "PORTHOLE_ACCESS_KEY_SECRET",
    "region": "PORTHOLE_REGION",
    "security_token": "PORTHOLE_SECURITY_TOKEN",
    "role_arn": "PORTHOLE_ROLE_ARN",
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
    security_token: str = ""
    """With temporary credentials (an STS. access key id)."""
    role_arn: str = ""
    """Assume this role with the profile's (or source_profile's) keys, renewing before expiry."""
    role_session_name: str = ""
    source_profile: str = ""
    duration_seconds: str = ""
    name: str = field(default="default", metadata={"saved": False})

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


def _saved(profile: Profile) -> list[str]:
    return [f.name for f in fields(profile) if f.metadata.get("saved", True)]


def load_profile(name: str = "default", _seen: tuple[str, ...] = ()) -> Profile:
    profile = Profile(name=name)
    path = config_path()
    if path.exists():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise ConfigError(f"{path} is not a valid config file: {exc}".splitlines()[0]) from None
        if parser.has_section(name):
            for key in _saved(profile):
                setattr(profile, key, parser.get(name, key, fallback=""))
        elif name != "default":
            raise ConfigError(f"profile {name!r} is not in {path}; run `porthole configure "
                              f"--profile {name}`")
    if not _seen:
        for key, var in ENV.items():
            if os.environ.get(var):
                setattr(profile, key, os.environ[var])
    return profile


def with_source(profile: Profile, _seen: tuple[str, ...] = ()) -> Profile:
    """A role profile without keys of its own takes them (and any server, CA file and
    region it lacks) from its source_profile."""
    if not profile.source_profile or profile.access_key_id:
        return profile
    if profile.source_profile in (profile.name, *_seen):
        raise ConfigError(f"profile {profile.name!r}: source_profile "
                          f"{profile.source_profile!r} refers back to itself")
    source = with_source(load_profile(profile.source_profile, (*_seen, profile.name)),
                         (*_seen, profile.name))
    return dataclasses.replace(
        profile, access_key_id=source.access_key_id,
        access_key_secret=source.access_key_secret, server=profile.server or source.server,
        ca_file=profile.ca_file or source.ca_file, region=profile.region or source.region)


def save_profile(profile: Profile, name: str = "default") -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    parser = configparser.ConfigParser(interpolation=None)
    if path.exists():
        parser.read(path)
    parser[name] = {key: getattr(profile, key) for key in _saved(profile)
                    if getattr(profile, key) or key in ("server", "ca_file", "access_key_id",
                                                        "access_key_secret", "region")}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        parser.write(f)
    os.replace(tmp, path)
    return path
