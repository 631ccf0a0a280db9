"""Start real `meshagent agent` processes, each on its own 127.0.0.N with Consul's default ports."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .ports import free_loopback_host
from .wait import wait_for

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))


@dataclass
class AgentProcess:
    """A running agent process started by a test; `stop()` kills it by PID."""

    host: str
    args: list[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NAME] (it execs: same PID)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"agent-{self.host}.log"

    @property
    def http_addr(self) -> str:
        """Base URL of the agent's HTTP API."""
        return f"http://{self.host}:8500"

    @property
    def dns_port(self) -> int:
        """The agent's DNS port."""
        return 8600

    def start(self, timeout: float = 20.0, wait: bool = True) -> AgentProcess:
        """Launch the process and (unless wait=False) wait until its HTTP API answers."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*self.prefix, MESHAGENT, "agent", *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the agent serves /v1/status/leader (fail at once, with its log, if it exits)."""
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            return httpx.get(f"{self.http_addr}/v1/status/leader", timeout=1.0).status_code == 200
        try:
            wait_for(ready, timeout, what=f"agent on {self.host} to serve HTTP", fatal=AssertionError)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- agent log ---\n{self.log()}") from None

    def log(self) -> str:
        """Everything the agent printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        """Send a signal to the agent process."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the agent (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_agent(workdir: Path, *extra: str, dev: bool = True, node: str | None = None) -> AgentProcess:
    """Start an agent on a fresh 127.0.0.N (dev mode unless dev=False) and wait until it serves."""
    host = free_loopback_host()
    args = (["-dev"] if dev else []) + ["-client", host, "-bind", host, "-node", node or f"node-{host.split('.')[-1]}",
                                        *extra]
    return AgentProcess(host=host, args=args, workdir=workdir).start()


def scratch_dir() -> Path:
    """A temporary directory for one test's files."""
    return Path(tempfile.mkdtemp(prefix="meshagent-test-"))


def proxy_workers_of(pid: int) -> list[int]:
    """PIDs of agent `pid`'s children running the sidecar data plane (meshagent.proxy.worker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"meshagent.proxy.worker" in cmdline:
            out.append(int(entry.name))
    return out


def accepts(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port is accepted now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
