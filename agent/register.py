"""Registration: trade an activation for an instance id, keeping a new Ed25519 key."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from agent.state import (
    CA_FILE,
    KEY_FILE,
    RECORD_FILE,
    StateError,
    new_key,
    pinned_context,
    public_bytes,
    split_servers,
    write_private,
)
from agent.sysinfo import host_info


class RegistrationError(Exception):
    """The server refused or could not be reached; str() is one line."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def register(
    server: str, ca_file: Path, activation_id: str, activation_code: str, region: str,
    state_dir: Path,
) -> str:
    if (state_dir / RECORD_FILE).exists():
        raise StateError(
            f"{state_dir} is already registered; use another --state-dir or remove "
            f"{state_dir / RECORD_FILE} to register again"
        )
    servers = split_servers(server)
    ctx = pinned_context(ca_file)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, pem = new_key()
    info = host_info()
    body = {
        "ActivationId": activation_id,
        "ActivationCode": activation_code,
        "Region": region,
        "PublicKey": base64.b64encode(public_bytes(key)).decode(),
        "Hostname": info["hostname"],
        "Platform": info["platform"],
        "OsName": info["os_name"],
        "AgentVersion": info["agent_version"],
    }
    for n, url in enumerate(servers):  # any replica can register; try each in turn
        try:
            reply = _post(url + "/agent/v1/register", body, ctx)
            break
        except RegistrationError as exc:
            if not exc.unreachable or n == len(servers) - 1:
                raise
    instance_id = reply.get("InstanceId")
    if not isinstance(instance_id, str):
        raise RegistrationError("server reply has no InstanceId")
    write_private(state_dir / KEY_FILE, pem)
    if ca_file.resolve() != (state_dir / CA_FILE).resolve():
        shutil.copyfile(ca_file, state_dir / CA_FILE)
    record = {"InstanceId": instance_id, "Server": ",".join(servers), "Region": region}
    write_private(state_dir / RECORD_FILE, json.dumps(record, indent=2).encode())
    return instance_id


def _post(url: str, body: dict[str, str], ctx: ssl.SSLContext) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())
            message = f"{error['Message']} ({error['Code']})"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise RegistrationError(f"registration refused: {message}") from None
    except urllib.error.URLError as exc:
        raise RegistrationError(f"cannot reach {url}: {exc.reason}", True) from None
    except (OSError, ValueError) as exc:
        raise RegistrationError(f"cannot reach {url}: {exc}", True) from None
