"""What the agent reports about its host."""

import platform
import socket

from agent import __version__


def host_info() -> dict[str, str]:
    try:
        with open("/etc/os-release") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        os_name = fields.get("PRETTY_NAME", "").strip('"')
    except OSError:
        os_name = ""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.system(),
        "os_name": os_name or f"{platform.system()} {platform.release()}",
        "agent_version": __version__,
    }
