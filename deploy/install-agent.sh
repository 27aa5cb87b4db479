#!/usr/bin/env bash
# Install the Porthole agent as a systemd service: its own venv under PREFIX, registration
# with the server, and the unit enabled and started. Safe to run again (it upgrades the
# package and keeps an existing registration).
#
#   install-agent.sh --server URL --ca-file F --activation-id I --activation-code C --region R
#   install-agent.sh --uninstall
#
# Options: --package SPEC   what pip installs (default: the source tree this script is in)
#          --prefix DIR     install root (default /opt/porthole)
#          --state-dir DIR  agent state (default /var/lib/porthole-agent)
#          --unit-dir DIR   where the unit goes (default /etc/systemd/system)
#
# --uninstall stops and removes the unit and PREFIX, and removes the agent's private key so
# the identity cannot be used again. It keeps, for audit, STATE_DIR/agent.json (which
# instance this machine was) and STATE_DIR/spool (results the server never acknowledged).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
package="$here/.."
prefix=/opt/porthole
state_dir=/var/lib/porthole-agent
unit_dir=/etc/systemd/system
server="" ca_file="" activation_id="" activation_code="" region="" uninstall=0

die() { echo "install-agent: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --server) server=$2; shift 2 ;;
        --ca-file) ca_file=$2; shift 2 ;;
        --activation-id) activation_id=$2; shift 2 ;;
        --activation-code) activation_code=$2; shift 2 ;;
        --region) region=$2; shift 2 ;;
        --package) package=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --state-dir) state_dir=$2; shift 2 ;;
        --unit-dir) unit_dir=$2; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[ "$(id -u)" -eq 0 ] || die "run as root: the agent starts shells and commands as any user"
unit="$unit_dir/porthole-agent.service"
systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

if [ "$uninstall" -eq 1 ]; then
    if systemd_running; then systemctl disable --now porthole-agent 2>/dev/null || true; fi
    rm -f "$unit"
    if systemd_running; then systemctl daemon-reload; fi
    rm -rf "$prefix"
    rm -f "$state_dir/agent.key" "$state_dir/status.json"
    echo "uninstalled; kept $state_dir/agent.json and $state_dir/spool for the record"
    exit 0
fi

command -v python3 >/dev/null || die "python3 (3.11 or newer) is required"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 must be 3.11 or newer"
echo "installing the agent into $prefix/venv"
[ -x "$prefix/venv/bin/python" ] || python3 -m venv "$prefix/venv"
"$prefix/venv/bin/pip" install --quiet --upgrade "$package"

if [ -f "$state_dir/agent.json" ] && [ -f "$state_dir/agent.key" ]; then
    echo "already registered: $(grep -o 'mi-[0-9a-f]*' "$state_dir/agent.json" | head -1)"
else
    for v in server ca_file activation_id activation_code region; do
        [ -n "${!v}" ] || die "--${v//_/-} is required to register"
    done
    "$prefix/venv/bin/porthole-agent" register --server "$server" --ca-file "$ca_file" \
        --activation-id "$activation_id" --activation-code "$activation_code" \
        --region "$region" --state-dir "$state_dir"
fi

mkdir -p "$unit_dir"
sed -e "s#/opt/porthole/venv/bin/#$prefix/venv/bin/#" \
    -e "s#/var/lib/porthole-agent#$state_dir#" \
    "$here/systemd/porthole-agent.service" > "$unit.tmp"
mv "$unit.tmp" "$unit"
if systemd_running; then
    systemctl daemon-reload
    systemctl enable --now porthole-agent
    systemctl restart porthole-agent  # picks up an upgraded package
    echo "porthole-agent is enabled and running: systemctl status porthole-agent"
else
    echo "systemd is not running here; installed $unit. Start the agent with:"
    sed -n 's/^ExecStart=//p' "$unit"
fi
