"""A worker process imports no trio, httpx or agent code: the data path is plain epoll callbacks (the hop
costs in docs/sidecar-proxy.md), and a worker starts fast and small. Checked in a fresh interpreter, since
this test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys

WORKER_MODULES = ["meshagent.proxy.worker", "meshagent.proxy.dataplane", "meshagent.proxy.l7",
                  "meshagent.proxy.metrics_http", "meshagent.proxy.access_log"]


def test_the_worker_side_imports_no_trio_httpx_or_agent() -> None:
    code = ("import importlib, json, sys\n"
            f"for m in {WORKER_MODULES!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'httpx', 'h11')\n"
            "                        or m.startswith('meshagent.agent'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []
