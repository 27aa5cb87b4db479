"""Port forwarding and ssh through Porthole to an instance that accepts no inbound connection.

The instance (agent, sshd on its own 127.0.0.1, test servers) lives in a network namespace
whose firewall drops every inbound connection and lets out only connections to the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness import BIN, Agent, Server, free_port, wait_for
from tests.netns import InstanceHost
from tests.sshd import Sshd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

HALF_CLOSE_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept(); n = 0
    while (d := c.recv(65536)): n += len(d)
    c.sendall(f"got {n} bytes".encode()); c.close()
"""


class Fleet:
    def __init__(self, root: Path) -> None:
        port = free_port()
        self.host = InstanceHost(port)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server = Server(root, hostnames=(self.host.host_ip,), listen_host=self.host.host_ip,
                             port=port).start()
        self.agent = Agent(self.server, root / "agent", prefix=self.host.prefix()).start()
        self.sshd = Sshd(root / "ssh", prefix=self.host.prefix()).start()
        self.www = root / "www"
        self.www.mkdir()
        (self.www / "index.html").write_text("<h1>hello from the instance</h1>\n")
        (self.www / "big.bin").write_bytes(os.urandom(1 << 20))
        self.web_port, self.open_port, self.half_port = free_port(), free_port(), free_port()
        self._spawn(sys.executable, "-m", "http.server", str(self.web_port), "--bind",
                    "127.0.0.1", "--directory", str(self.www))
        self._spawn(sys.executable, "-m", "http.server", str(self.open_port), "--bind",
                    "0.0.0.0", "--directory", str(self.www))
        self._spawn(sys.executable, "-c", HALF_CLOSE_SERVER, str(self.half_port))

    def _spawn(self, *argv: str) -> None:
        self.procs.append(subprocess.Popen([*self.host.prefix(), *argv],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait()
        self.sshd.stop()
        self.agent.stop()
        self.server.stop()
        self.host.close()

    def forward(self, *args: str) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen([str(BIN / "porthole"), "forward", self.agent.instance_id, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.server.env())
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            proc.kill()
            raise AssertionError(f"forward did not start: {line}{proc.stderr.read()}")
        return proc, int(line)

    def ssh_args(self) -> list[str]:
        proxy = f"{BIN / 'porthole'} ssh-proxy %h %p"
        return [*self.sshd.client_options(), "-o", f"ProxyCommand={proxy}",
                "-p", str(self.sshd.port)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("forward"))
    yield f
    f.close()


def _get(port: int, path: str = "/") -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as r:
        return r.read()


def test_the_instance_accepts_no_inbound_connection(fleet):
    with pytest.raises(OSError):
        socket.create_connection((fleet.host.ip, fleet.open_port), timeout=2)
    assert fleet.server.online(fleet.agent.instance_id)


def test_forward_reaches_a_web_server_and_many_parallel_connections(fleet):
    proc, port = fleet.forward("--remote-port", str(fleet.web_port))
    try:
        assert _get(port) == b"<h1>hello from the instance</h1>\n"
        expected = hashlib.sha256((fleet.www / "big.bin").read_bytes()).hexdigest()
        with ThreadPoolExecutor(16) as pool:
            bodies = list(pool.map(lambda _: _get(port, "/big.bin"), range(32)))
        assert all(hashlib.sha256(b).hexdigest() == expected for b in bodies)
    finally:
        proc.terminate()
        proc.wait()
    kinds = {s["Kind"] for s in fleet.server.cli_json("sessions", "list")["Sessions"]}
    assert "Port" in kinds


def test_half_close_travels_both_ways(fleet):
    proc, port = fleet.forward("--remote-port", str(fleet.half_port), "--local-port", "0")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"x" * 300_000)
            s.shutdown(socket.SHUT_WR)  # the instance side sees EOF and answers
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        assert reply == b"got 300000 bytes"
    finally:
        proc.terminate()
        proc.wait()


def test_metadata_and_link_local_targets_are_refused(fleet):
    proc, port = fleet.forward("--remote-port", "80", "--remote-host", "169.254.169.254")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.settimeout(20)
            assert s.recv(100) == b""  # closed without a byte
    finally:
        proc.terminate()
        _, err = proc.communicate()
    assert "instance metadata address" in err and "allow_link_local_forwarding" in err


def test_forward_into_a_disabled_region_is_one_line(fleet):
    fleet.server.cli("settings", "session-manager", "--region", "local", "--disable")
    try:
        result = fleet.server.cli("forward", fleet.agent.instance_id, "--remote-port", "22",
                                  check=False)
    finally:
        fleet.server.cli("settings", "session-manager", "--region", "local", "--enable")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "disabled in region local" in result.stderr


def test_ssh_scp_sftp_and_rsync_through_ssh_proxy(fleet, tmp_path):
    target = f"root@{fleet.agent.instance_id}"
    env = fleet.server.env()
    ssh = ["ssh", *fleet.ssh_args()]
    out = subprocess.run([*ssh, target, "echo hello-$((6*7)); cat /proc/net/route | wc -l"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("hello-42")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 << 20))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    remote = f"/tmp/ph-{payload.stat().st_ino}"
    scp = ["scp", *fleet.ssh_args()]
    scp = [a if a != "-p" else "-P" for a in scp]
    assert subprocess.run([*scp, str(payload), f"{target}:{remote}"], env=env,
                          capture_output=True, timeout=120).returncode == 0
    back = tmp_path / "back.bin"
    assert subprocess.run([*scp, f"{target}:{remote}", str(back)], env=env,
                          capture_output=True, timeout=120).returncode == 0
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    batch = tmp_path / "batch"
    batch.write_text(f"ls -l {remote}\nrm {remote}\n")
    sftp = ["sftp", *[a if a != "-p" else "-P" for a in fleet.ssh_args()], "-b", str(batch)]
    result = subprocess.run([*sftp, target], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and remote.split("/")[-1] in result.stdout
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("alpha\n")
    (tree / "b.txt").write_text("beta\n")
    rsh = " ".join(["ssh", *[f"'{a}'" if " " in a else a for a in fleet.ssh_args()]])
    result = subprocess.run(["rsync", "-a", "-e", rsh, f"{tree}/", f"{target}:/tmp/ph-tree/"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = subprocess.run([*ssh, target, "cat /tmp/ph-tree/sub/a.txt /tmp/ph-tree/b.txt; "
                          "rm -r /tmp/ph-tree"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.stdout == "alpha\nbeta\n"


def test_ssh_config_block(fleet):
    out = fleet.server.cli("ssh-config").stdout
    assert out.startswith("Host mi-*\n") and "ssh-proxy %h %p" in out


# --- porthole cp ---------------------------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cp_file_both_ways_keeps_mode_mtime_and_content(fleet, tmp_path):
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(8 << 20))
    os.chmod(src, 0o640)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    remote = f"/tmp/ph-cp-{os.getpid()}.bin"
    fleet.server.cli("cp", str(src), f"{fleet.agent.instance_id}:{remote}")
    back = tmp_path / "back.bin"
    fleet.server.cli("cp", f"{fleet.agent.instance_id}:{remote}", str(back))
    assert _sha(back) == _sha(src)
    st = back.stat()
    assert oct(st.st_mode & 0o777) == "0o640" and st.st_mtime == 1_600_000_000
    subprocess.run([*fleet.host.prefix(), "rm", "-f", remote])


def test_cp_recursive_both_ways(fleet, tmp_path):
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "deep.txt").write_text("deep\n")
    (tree / "top.txt").write_text("top\n")
    os.chmod(tree / "a", 0o750)
    remote = f"/tmp/ph-tree-{os.getpid()}"
    fleet.server.cli("cp", "-r", str(tree), f"{fleet.agent.instance_id}:{remote}")
    back = tmp_path / "back"
    fleet.server.cli("cp", "-r", f"{fleet.agent.instance_id}:{remote}", str(back))
    assert (back / "a" / "b" / "deep.txt").read_text() == "deep\n"
    assert (back / "top.txt").read_text() == "top\n"
    assert oct((back / "a").stat().st_mode & 0o777) == "0o750"
    subprocess.run([*fleet.host.prefix(), "rm", "-rf", remote])


def test_cp_refuses_traversal_and_writes_only_where_the_user_may(fleet, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("x")
    traversal = fleet.server.cli("cp", str(src), f"{fleet.agent.instance_id}:/tmp/../etc/x",
                                 check=False)
    assert traversal.returncode == 1 and "'..'" in traversal.stderr
    denied = fleet.server.cli("cp", "--user", "nobody", str(src),
                              f"{fleet.agent.instance_id}:/root/not-yours", check=False)
    assert denied.returncode == 1
    assert "/root/not-yours: Permission denied" in denied.stderr
    assert denied.stderr.count("\n") == 1
    missing = fleet.server.cli("cp", f"{fleet.agent.instance_id}:/no/such/file",
                               str(tmp_path / "x"), check=False)
    assert missing.returncode == 1 and "No such file" in missing.stderr
    assert not (tmp_path / "x").exists()


def test_cp_survives_a_link_cut_mid_copy(fleet, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(48 << 20))
    remote = f"/tmp/ph-cut-{os.getpid()}.bin"
    proc = subprocess.Popen([str(BIN / "porthole"), "cp", str(src),
                             f"{fleet.agent.instance_id}:{remote}"], env=fleet.server.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reject = ["OUTPUT", "-p", "tcp", "--dport", str(fleet.server.port), "-j", "REJECT",
              "--reject-with", "tcp-reset"]
    wait_for(lambda: _partial_upload(fleet, remote) > 4 << 20, 60, "the upload under way")
    fleet.host.run("iptables", "-I", *reject)  # the instance's link to the server breaks
    time.sleep(2)
    fleet.host.run("iptables", "-D", *reject)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    copied = tmp_path / "copied.bin"
    subprocess.run([*fleet.host.prefix(), "cp", remote, str(copied)], check=True)
    subprocess.run([*fleet.host.prefix(), "rm", "-f", remote])
    assert _sha(copied) == _sha(src)
    assert fleet.agent.log().count("connected to") >= 2, "the link was not actually cut"


def _partial_upload(fleet, remote: str) -> int:
    """Bytes so far in the temporary file an upload to ``remote`` writes."""
    directory, name = os.path.split(remote)
    out = subprocess.run([*fleet.host.prefix(), "sh", "-c",
                          f"stat -c %s {directory}/.{name}.*.porthole 2>/dev/null || echo 0"],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else 0


def test_policy_port_number_condition_gates_forwarding(fleet, tmp_path):
    """A user allowed StartTerminalSession only for sshd's port reaches it and nothing else."""
    srv = fleet.server
    name = f"fwd{os.getpid() % 10000}"
    srv.cli("iam", "user", "create", name)
    key = srv.cli_json("iam", "access-key", "create", "--user", name)
    doc = tmp_path / "ssh-only.json"
    doc.write_text(json.dumps({"Version": "1", "Statement": [{
        "Effect": "Allow", "Action": "ecs:StartTerminalSession", "Resource": "*",
        "Condition": {"NumericEquals": {"ecs:PortNumber": [fleet.sshd.port]}}}]}))
    srv.cli("iam", "policy", "create", f"{name}-ssh", "--document", str(doc))
    srv.cli("iam", "policy", "attach", f"{name}-ssh", "--user", name)
    env = {"PORTHOLE_ACCESS_KEY_ID": key["AccessKeyId"],
           "PORTHOLE_ACCESS_KEY_SECRET": key["AccessKeySecret"]}
    refused = srv.cli("forward", fleet.agent.instance_id, "--remote-port",
                      str(fleet.web_port), check=False, **env)
    assert refused.returncode == 1 and "ecs:StartTerminalSession" in refused.stderr
    assert f"instance/{fleet.agent.instance_id}" in refused.stderr
    shell = srv.cli("session", fleet.agent.instance_id, "--command", "id", check=False, **env)
    assert shell.returncode == 1 and "ecs:StartTerminalSession" in shell.stderr
    out = subprocess.run(["ssh", *fleet.ssh_args(), f"root@{fleet.agent.instance_id}",
                          "echo port-allowed"], capture_output=True, text=True, timeout=60,
                         env=srv.env(**env))
    assert out.returncode == 0 and out.stdout == "port-allowed\n", out.stderr
