#!/usr/bin/env bash
# Installs the system tools the test suite drives (vim, less, ps/pgrep, useradd, ip,
# iptables, sshd, ssh, rsync) when they
# are missing. Needs root and Debian's apt; does nothing when everything is present.
set -euo pipefail
missing=()
command -v vim >/dev/null || missing+=(vim)
command -v less >/dev/null || missing+=(less)
command -v pgrep >/dev/null || missing+=(procps)
command -v useradd >/dev/null || missing+=(passwd)
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables >/dev/null || missing+=(iptables)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v rsync >/dev/null || missing+=(rsync)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "tests need: ${missing[*]} (install them, or some tests will fail)" >&2
    exit 0
fi
echo "installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
