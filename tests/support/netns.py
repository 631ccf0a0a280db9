"""The one network-namespace harness: hosts in namespaces on a Linux bridge, each run in its own free /24
of 198.18.0.0/15, recorded in a registry so that what a crashed run left behind is removed by the next.

Two front ends share it: `Hosts` below (bare hosts for suites that start their own processes: tests/raft)
and `tests/support/cluster_hosts.py` (`Cluster`: hosts with rendered agent config, the VM fleet).

Names: a run is `<prefix><4 chars>`; its bridge is `<run>b` (holding the /24's .1, so the test process
reaches every host), host i's veth is `<run>h<i>` in the root namespace and `eth0` inside its namespace
`<run>-<host name>`. Hosts have no default route: they reach only each other and the test process.

Registry: each run writes /run/meshagent-cluster/<run>.json (owner PID and start time, namespaces, links,
subnet, agent PIDs where the front end knows them) *before* it creates anything; `cleanup_stale(prefix)`,
which every new run calls first, tears down the runs whose owner is gone (and unrecorded namespaces and
links named like the prefix). Detached runs (the `up` command) stay until `down`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ports import free_loopback_host
from .wait import wait_for

log = logging.getLogger("tests.support.netns")

NETWORK = ipaddress.ip_network("198.18.0.0/15")
HOSTS_PREFIX = "mns"  # `Hosts` runs; tests/support/cluster_hosts.py uses "mvc"
_RUN_CHARS = string.ascii_lowercase + string.digits
_RUN_LEN = 4


# ---------------------------------------------------------------------- processes


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when it is gone or a zombie): with the PID,
    it identifies a process, so that a recorded PID that was reused is never signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def same_process(pid: int | None, start: int | None) -> bool:
    """Whether `pid` still is the process that started at `start`."""
    return pid is not None and start is not None and proc_start_time(pid) == start


def wait_gone(pid: int, start: int | None, timeout: float) -> bool:
    """Until the process (pid, start) has exited; False after `timeout`."""
    def gone() -> bool:
        now = proc_start_time(pid)
        return now is None or (start is not None and now != start)
    try:
        wait_for(gone, timeout, 0.02, f"process {pid} to exit")
    except AssertionError:
        return False
    return True


def signal_agent(pid: int, start: int | None, sig: int, group: bool) -> bool:
    """Signal a recorded agent process (its whole process group with `group`: the agent leads its own
    session, so script checks it started go too). False when that process no longer exists."""
    if start is not None and proc_start_time(pid) != start:
        return False
    try:
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def is_agent(pid: int) -> bool:
    """Whether the process is a `meshagent agent` (the only kind the cleanup ever kills)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"meshagent" in part for part in cmdline) and b"agent" in cmdline


# ---------------------------------------------------------------------- commands


def run_cmd(argv: Sequence[str], check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a command, its output captured; RuntimeError (with its stderr) on failure when `check`."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except OSError as exc:  # e.g. no `ip` at all: as a failed command
        proc = subprocess.CompletedProcess(list(argv), 127, "", str(exc))
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """iproute2's `ip ARGS`."""
    return run_cmd(["ip", *args], check=check)


def links() -> set[str]:
    """Names of the root namespace's network interfaces."""
    proc = ip("-j", "link", "show", check=False)
    if proc.returncode != 0:
        return set()
    return {link["ifname"] for link in json.loads(proc.stdout or "[]")}


def can_use_namespaces() -> bool:
    """Root, iproute2 and network namespaces: what making hosts needs."""
    return os.geteuid() == 0 and shutil.which("ip") is not None and Path("/proc/self/ns/net").exists()


# ---------------------------------------------------------------------- the run registry


def registry_dir() -> Path:
    """Where runs record themselves: /run/meshagent-cluster as root (gone at reboot, as namespaces are)."""
    if os.geteuid() == 0 and Path("/run").is_dir():
        return Path("/run/meshagent-cluster")
    return Path(tempfile.gettempdir()) / f"meshagent-cluster-{os.geteuid()}"


@contextlib.contextmanager
def registry_lock() -> Iterator[Path]:
    """The registry directory, locked against other runs choosing names and subnets at the same time."""
    reg = registry_dir()
    reg.mkdir(parents=True, exist_ok=True)
    with open(reg / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield reg
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON by rename, so a reader never sees half a record."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def records(reg: Path) -> list[dict[str, Any]]:
    """Every run record in the registry."""
    out = []
    for path in sorted(reg.glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            log.warning("ignoring unreadable run record %s", path)
    return out


def owner() -> dict[str, int | None]:
    """This process as a record's owner."""
    return {"pid": os.getpid(), "start": proc_start_time(os.getpid())}


def record_is_live(rec: dict[str, Any]) -> bool:
    """Whether the run's owner still runs (a detached run: whether its directory still holds its state)."""
    if rec.get("detached"):
        return (Path(rec.get("dir", "/nonexistent")) / str(rec.get("state_file", "cluster.json"))).exists()
    who = rec.get("owner") or {}
    return same_process(who.get("pid"), who.get("start"))


def teardown(rec: dict[str, Any]) -> list[str]:
    """Kill the recorded agents (verified by start time) and remove the recorded namespaces and links.
    Returns what could not be removed."""
    problems: list[str] = []
    for h in rec.get("hosts", []):
        pid, start = h.get("pid"), h.get("start")
        if pid and same_process(pid, start) and is_agent(pid):
            signal_agent(pid, start, signal.SIGKILL, group=True)
            if not wait_gone(pid, start, 10):
                problems.append(f"process {pid} ({h.get('name')}) did not exit after SIGKILL")
    if rec.get("isolated"):
        namespaces = set(ip("netns", "list", check=False).stdout.split())
        present = links()
        for h in rec.get("hosts", []):
            if h.get("netns") in namespaces:
                ip("netns", "delete", h["netns"], check=False)
            if h.get("veth") in present:
                ip("link", "delete", h["veth"], check=False)
        if rec.get("bridge") in present:
            ip("link", "delete", rec["bridge"], check=False)
        namespaces = set(ip("netns", "list", check=False).stdout.split())
        present = links()
        problems += [f"namespace {h['netns']}" for h in rec.get("hosts", []) if h.get("netns") in namespaces]
        problems += [f"link {n}" for n in [rec.get("bridge")] + [h.get("veth") for h in rec.get("hosts", [])]
                     if n and n in present]
    return problems


def check_prefix(prefix: str) -> None:
    """A run prefix fits interface names (15 characters at most)."""
    if not re.fullmatch(r"[a-z][a-z0-9]{0,5}", prefix):
        raise ValueError(f"prefix {prefix!r}: 1-6 characters, a-z then a-z/0-9 (interface names are 15 at most)")


def cleanup_stale(prefix: str, keep: Sequence[str] = ()) -> list[str]:
    """Remove what earlier runs with this prefix left behind when their owner died (crash, SIGKILL,
    timeout): their recorded agents, namespaces, veths and bridges, and unrecorded namespaces and links
    named like ours. Runs in `keep`, runs whose owner lives and detached (`up`) runs stay. Returns the
    names of the runs removed."""
    check_prefix(prefix)
    removed = []
    with registry_lock() as reg:
        live = set(keep)
        for rec in records(reg):
            run = rec.get("run", "")
            if not run.startswith(prefix) or run in keep:
                continue
            if record_is_live(rec):
                live.add(run)
                continue
            problems = teardown(rec)
            if problems:
                log.warning("stale run %s: could not remove %s", run, ", ".join(problems))
            (reg / f"{run}.json").unlink(missing_ok=True)
            removed.append(run)
        if can_use_namespaces():
            # Names like ours with no live record: a run whose record was lost. Their processes are not
            # recorded, so nothing is killed; the namespace goes when they exit.
            run_re = re.compile(rf"^({re.escape(prefix)}[{_RUN_CHARS}]{{{_RUN_LEN}}})(?:-|b$|h\d+$)")
            for ns in ip("netns", "list", check=False).stdout.split():
                m = run_re.match(ns)
                if m and m.group(1) not in live:
                    ip("netns", "delete", ns, check=False)
                    removed.append(m.group(1))
            for link in links():
                m = run_re.match(link)
                if m and m.group(1) not in live:
                    ip("link", "delete", link, check=False)
                    removed.append(m.group(1))
    removed = sorted(set(removed))
    if removed:
        log.warning("removed stale runs: %s", ", ".join(removed))
    return removed


def new_run(reg: Path, prefix: str) -> str:
    """A run name no record, namespace or link uses yet (call with the registry locked)."""
    taken = {r.get("run") for r in records(reg)} | set(ip("netns", "list", check=False).stdout.split()) | links()
    while True:
        run = prefix + "".join(secrets.choice(_RUN_CHARS) for _ in range(_RUN_LEN))
        if run not in taken and not any(t and t.startswith(run) for t in taken):
            return run


def free_subnet(reg: Path) -> ipaddress.IPv4Network:
    """The first /24 of 198.18.0.0/15 that no interface, route or other live run uses (registry locked)."""
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for link in json.loads(ip("-j", "-4", "addr", "show").stdout or "[]"):
        for a in link.get("addr_info", []):
            used.append(ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network)
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = route.get("dst", "default")
        if dst != "default" and re.fullmatch(r"[\d.]+(/\d+)?", dst):
            used.append(ipaddress.ip_network(dst, strict=False))
    for rec in records(reg):
        if rec.get("subnet") and rec.get("isolated") and record_is_live(rec):
            used.append(ipaddress.ip_network(rec["subnet"]))
    for candidate in NETWORK.subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used if u.version == 4 and u.prefixlen > 0):
            return candidate  # type: ignore[return-value]
    raise RuntimeError("every /24 of 198.18.0.0/15 is in use")


# ---------------------------------------------------------------------- bridge, namespaces, links


def make_bridge(bridge: str, subnet: ipaddress.IPv4Network) -> str:
    """Create the run's bridge holding the subnet's .1 (the test process's address); returns that address."""
    gateway = str(subnet.network_address + 1)
    ip("link", "add", bridge, "type", "bridge")
    ip("addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", bridge)
    ip("link", "set", bridge, "up")
    return gateway


def add_namespace(netns: str, veth: str, address: str, prefixlen: int, bridge: str) -> None:
    """A namespace whose `eth0` (with `address`) is the far end of `veth`, plugged into the bridge."""
    ip("netns", "add", netns)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("link", "set", veth, "master", bridge, "up")
    ip("-n", netns, "addr", "add", f"{address}/{prefixlen}", "dev", "eth0")
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("-n", netns, "link", "set", "lo", "up")


def cut_link(netns: str, veth: str) -> None:
    """Take a namespace off the network: both ends of its veth down (its processes keep running)."""
    ip("link", "set", veth, "down")
    ip("-n", netns, "link", "set", "eth0", "down")


def heal_link(netns: str, veth: str) -> None:
    """Put a namespace back on the network."""
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("link", "set", veth, "up")


# ---------------------------------------------------------------------- bare hosts


@dataclass
class Host:
    """One host: its address and, with namespaces, the namespace name and the bridge-side link."""

    address: str
    netns: str | None = None
    link: str | None = None

    @property
    def prefix(self) -> list[str]:
        """Command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []


_LIVE: list[Hosts] = []


@atexit.register
def _close_all_at_exit() -> None:
    for hosts in list(_LIVE):
        with contextlib.suppress(Exception):
            hosts.close()


@dataclass(eq=False)  # identity: _LIVE.remove must find this object, not an equal one
class Hosts:
    """Creates hosts (.11, .12, ... of a free /24) on demand and removes everything in `close()`.

    Where namespaces cannot be made (no root, no `ip`), hosts fall back to 127.0.0.N addresses and a cut
    becomes SIGSTOP/SIGCONT of the host's process; it says so on stdout.
    """

    namespaces: bool = True
    prefix: str = HOSTS_PREFIX
    hosts: list[Host] = field(default_factory=list)
    run: str = ""
    subnet: str = ""
    bridge: str | None = None

    def __post_init__(self) -> None:
        if not self.namespaces:
            return
        try:
            if not can_use_namespaces():
                raise RuntimeError("network namespaces need root and iproute2's `ip`")
            _LIVE.append(self)
            cleanup_stale(self.prefix)
            with registry_lock() as reg:
                self.run = new_run(reg, self.prefix)
                subnet = free_subnet(reg)
                self.subnet, self.bridge = str(subnet), f"{self.run}b"
                self._save(reg)  # the record first: a crash from here on leaves something cleanup_stale finds
                make_bridge(self.bridge, subnet)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            self.close()
            self.namespaces = False
            print(f"network namespaces unavailable ({exc}); falling back to 127.0.0.N and SIGSTOP for cuts")

    def add(self) -> Host:
        """A new host."""
        if not self.namespaces:
            host = Host(free_loopback_host())
            self.hosts.append(host)
            return host
        n = len(self.hosts) + 1
        subnet = ipaddress.ip_network(self.subnet)
        host = Host(str(subnet.network_address + 10 + n), f"{self.run}-{n}", f"{self.run}h{n}")
        self.hosts.append(host)
        self._save()
        assert host.netns and host.link and self.bridge
        add_namespace(host.netns, host.link, host.address, subnet.prefixlen, self.bridge)
        return host

    def cut(self, host: Host, pid: int | None = None) -> None:
        """Take the host off the network."""
        if host.netns and host.link:
            cut_link(host.netns, host.link)
        elif pid is not None:
            os.kill(pid, signal.SIGSTOP)  # the fallback "cut"

    def heal(self, host: Host, pid: int | None = None) -> None:
        """Put it back."""
        if host.netns and host.link:
            heal_link(host.netns, host.link)
        elif pid is not None:
            os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Remove every namespace, link and the bridge, and the run's record (also after a failed test)."""
        if self.run:
            problems = teardown(self._record())
            if problems:
                log.warning("run %s: could not remove %s", self.run, ", ".join(problems))
            with contextlib.suppress(OSError), registry_lock() as reg:
                (reg / f"{self.run}.json").unlink(missing_ok=True)
        self.hosts.clear()
        self.bridge = None
        self.run = ""
        if self in _LIVE:
            _LIVE.remove(self)

    def _record(self) -> dict[str, Any]:
        return {"run": self.run, "prefix": self.prefix, "isolated": True, "detached": False, "owner": owner(),
                "bridge": self.bridge, "subnet": self.subnet,
                "hosts": [{"name": h.netns, "netns": h.netns, "veth": h.link} for h in self.hosts]}

    def _save(self, reg: Path | None = None) -> None:
        if reg is not None:
            write_json(reg / f"{self.run}.json", self._record())
            return
        with registry_lock() as reg_:
            write_json(reg_ / f"{self.run}.json", self._record())
