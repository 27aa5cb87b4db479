"""A test host in a network namespace: it reaches the server, and no one reaches it."""

from __future__ import annotations

import subprocess
import uuid


def _free_subnet() -> int:
    """A 10.213.K.0/30 that no interface of this host uses (another test run, or one that
    was killed before it cleaned up, may hold some)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for k in range(1, 255):
        if f" 10.213.{k}.1/" not in used:
            return k
    raise RuntimeError("no free 10.213.K.0/30 subnet for a test host")


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class InstanceHost:
    """Namespace NAME with a veth link to the host (HOST_IP <-> IP); its firewall drops
    every inbound connection and allows outbound only to the server's port."""

    def __init__(self, server_port: int) -> None:
        self.name = "ph" + uuid.uuid4().hex[:8]
        k = _free_subnet()
        self.host_ip, self.ip = f"10.213.{k}.1", f"10.213.{k}.2"
        self.server_port = server_port
        host_if, ns_if = f"vh{self.name[2:]}", f"vn{self.name[2:]}"
        _run("ip", "netns", "add", self.name)
        try:
            _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            _run("ip", "link", "set", ns_if, "netns", self.name)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", host_if)
            _run("ip", "link", "set", host_if, "up")
            self.run("ip", "addr", "add", f"{self.ip}/30", "dev", ns_if)
            self.run("ip", "link", "set", ns_if, "up")
            self.run("ip", "link", "set", "lo", "up")
            for rule in (
                ["-P", "INPUT", "DROP"], ["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
                # replies from the server to connections the instance opened
                ["-A", "INPUT", "-s", self.host_ip, "-p", "tcp", "--sport", str(server_port),
                 "!", "--syn", "-j", "ACCEPT"],
                ["-P", "OUTPUT", "DROP"], ["-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"],
                ["-A", "OUTPUT", "-d", self.host_ip, "-p", "tcp", "--dport", str(server_port),
                 "-j", "ACCEPT"],
            ):
                self.run("iptables", *rule)
        except subprocess.CalledProcessError:
            self.close()
            raise

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *args: str) -> None:
        _run(*self.prefix(), *args)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
