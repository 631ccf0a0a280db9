#!/usr/bin/env bash
# Provision one VM: install meshagent from the checkout, render its config, install the systemd unit.
#
#   provision.sh ROLE ADDR SERVER_ADDR...      ROLE is server or client; ADDR is this VM's private address
#
# Run by the Vagrantfile as root with the checkout at /vagrant (MESHAGENT_SRC overrides). Idempotent:
# `vagrant provision` re-runs it, reinstalling from the checkout and restarting the agent.
# MESHAGENT_RENDER_ONLY=DIR only writes the config (agent.hcl and the services) into DIR and changes
# nothing else on the machine: tests/cluster/test_vagrant.py checks that output with `meshagent validate`.
set -euo pipefail

usage() { echo "usage: $0 server|client ADDR SERVER_ADDR..." >&2; exit 2; }
[[ $# -ge 3 ]] || usage
role=$1 addr=$2
shift 2
servers=("$@")
[[ $role == server || $role == client ]] || usage

src=${MESHAGENT_SRC:-/vagrant}
here=$src/vagrant
prefix=/opt/meshagent
conf=${MESHAGENT_RENDER_ONLY:-/etc/meshagent.d}
data=/var/lib/meshagent

# Agent config from the template shared with tests/support/cluster_hosts.py. A server's retry_join lists every
# server, itself included: joining itself counts, so the first server is ready before the others exist.
render_config() {
  local join=() values=()
  for s in "${servers[@]}"; do join+=("retry_join+=$s"); done
  values=(datacenter=dc1 "node_name=$(hostname -s)" "data_dir=$data" log_level=info
          "bind_addr=$addr" client_addr=0.0.0.0 "${join[@]}")
  if [[ $role == server ]]; then
    values+=("bootstrap_expect=${#servers[@]}")
  fi
  python3 "$here/render.py" "$here/templates/$role.hcl.tmpl" "${values[@]}" -o "$conf/agent.hcl"
  # Clients run the example services (the stand-in listeners below make their checks pass).
  if [[ $role == client ]]; then
    install -m 0644 "$here/services/web.hcl" "$here/services/db.hcl" "$conf/"
  fi
}

if [[ -n ${MESHAGENT_RENDER_ONLY:-} ]]; then
  render_config
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v dig >/dev/null || ! python3 -c 'import ensurepip' 2>/dev/null || ! command -v curl >/dev/null; then
  apt-get update -q
  apt-get install -y -q python3 python3-venv dnsutils curl
fi

# The agent runs as its own system user (see meshagent.service).
if ! id -u meshagent >/dev/null 2>&1; then
  useradd --system --home-dir "$data" --no-create-home --shell /usr/sbin/nologin meshagent
fi
install -d -o meshagent -g meshagent -m 0750 "$data"
install -d -m 0755 "$conf"

# meshagent from the checkout, copied (not editable: the VM's venv must not depend on the synced folder);
# the second install replaces the code even when the version number did not change.
[[ -x $prefix/bin/pip ]] || python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --upgrade pip
"$prefix/bin/pip" install -q "$src"
"$prefix/bin/pip" install -q --force-reinstall --no-deps "$src"

render_config
if [[ $role == client ]]; then
  install -m 0644 "$here/meshagent-demo@.service" /etc/systemd/system/
  install -d -m 0755 /usr/share/doc/meshagent-demo
  echo "meshagent demo: $(hostname -s)" > /usr/share/doc/meshagent-demo/index.html
fi
"$prefix/bin/meshagent" validate "$conf"

install -m 0644 "$here/meshagent.service" /etc/systemd/system/meshagent.service
systemctl daemon-reload
if [[ $role == client ]]; then
  systemctl enable --now meshagent-demo@80.service meshagent-demo@5432.service
fi
systemctl enable meshagent.service
# --no-block: the unit becomes active (READY=1) once the agent has joined, which for a client needs a
# server; do not hold up provisioning on it, wait for the HTTP API instead.
systemctl restart --no-block meshagent.service
for _ in $(seq 60); do
  if curl -fsS -o /dev/null "http://127.0.0.1:8500/v1/agent/self"; then
    echo "meshagent $role $(hostname -s) ($addr) is up; joining ${servers[*]}"
    exit 0
  fi
  sleep 1
done
echo "meshagent did not answer on :8500 within 60 s" >&2
journalctl -u meshagent.service -n 50 --no-pager >&2 || true
exit 1
