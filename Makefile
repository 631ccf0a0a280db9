# The two set-up commands the README documents: `make dev` and `make test` (everything, as CI runs it).
# While editing: `make test-fast` (lint, mypy on the cores, tests not marked slow/sim/cluster; under 90 s on
# a quiet 2-core machine) and `make check-imports` (the layering rules, tests/test_import_rules.py).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: dev dev-tools test test-fast check-imports lint system-deps bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Set up and start a development agent (in-memory, HTTP :8500, DNS :8600, services from ./examples).
dev: $(BIN)/.installed dev-tools
	$(BIN)/meshagent agent -dev -config-dir examples/services

# What the README's Quick start runs beside the agent: dig (dnsutils) for its DNS answers. Installed when
# missing (apt-get; as root, else through sudo); elsewhere it says what to install and carries on.
dev-tools:
	@command -v dig >/dev/null || { \
		if ! command -v apt-get >/dev/null; then echo "dig not found: install your system's dnsutils/bind-utils package"; \
		elif [ "$$(id -u)" = 0 ]; then echo "installing dnsutils (dig)"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dnsutils; \
		else echo "installing dnsutils (dig) with sudo"; sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q dnsutils; fi; }

# Tools the tests drive as outside clients: dig (dnsutils); openssl (s_client against :8300); ip (iproute2) for the network-namespace hosts;
# serf (Debian's HashiCorp Serf agent) as the gossip interop peer; dnsperf, dnsmasq, wrk and haproxy (the proxy
# benchmark's reference pair) for the benchmarks;
# vagrant for `vagrant validate` of vagrant/ (without its recommends: libvirt, qemu and NFS are 300+ MB and
# validation needs none of them).
system-deps:
	@if ! command -v dig >/dev/null || ! command -v openssl >/dev/null || ! command -v dnsperf >/dev/null || ! command -v wrk >/dev/null || ! test -x /usr/sbin/haproxy || ! test -x /usr/sbin/dnsmasq || ! command -v ip >/dev/null || ! command -v serf >/dev/null || ! command -v vagrant >/dev/null; then \
		echo "installing dnsutils iproute2 serf dnsperf dnsmasq-base wrk haproxy vagrant (needs root)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dnsutils iproute2 openssl serf dnsperf dnsmasq-base wrk haproxy && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends vagrant; \
	fi

# Set up and run the whole test suite (slow suites included; the simulations beside the rest: .ci/pytest-all).
test: $(BIN)/.installed system-deps
	$(BIN)/ruff check agent gossip raft proxy cli tests bench
	.ci/typecheck raft gossip agent proxy
	BIN=$(BIN) .ci/pytest-all

# Lint, type-check the cores, and every test not marked slow, sim or cluster (pytest's exit 5, nothing
# collected, fails like any other error).
test-fast: $(BIN)/.installed system-deps
	$(BIN)/ruff check agent gossip raft proxy cli tests bench
	.ci/typecheck raft gossip agent proxy
	$(BIN)/pytest -q -m "not slow and not sim and not cluster"

# What each folder may import (docs/ARCHITECTURE): cores no trio/socket/time/agent, proxy/ no agent, cli/ only config.
check-imports: $(BIN)/.installed
	$(BIN)/pytest -q tests/test_import_rules.py

bench: $(BIN)/.installed system-deps
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/dns/run.py
	$(BIN)/python bench/http/run.py
	$(BIN)/python bench/raft/run.py
	$(BIN)/python bench/gossip/run.py
	$(BIN)/python bench/gossip/sim_rounds.py
	$(BIN)/python bench/cluster/run.py
	$(BIN)/python bench/connect/leaf_issuance.py
	$(BIN)/python bench/connect/authorize.py
	$(BIN)/python bench/proxy/run.py
	$(BIN)/python bench/traffic/run.py
	$(BIN)/python bench/traffic/propagation.py
