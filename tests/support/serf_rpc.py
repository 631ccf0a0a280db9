"""Debian's `serf agent` as an outside peer: start it by PID, and talk to its msgpack RPC port.

The RPC protocol (serf/client): a stream of msgpack objects, a header `{Command, Seq}` then the request
body; answers are a header `{Seq, Error}` then the body when there is one. Only what the tests and
benchmarks use is here: handshake, members, join, leave, event, force-leave and the user-event stream.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

SERF = shutil.which("serf") or "/usr/bin/serf"


class SerfRPCError(Exception):
    """The agent answered with an error, or did not answer in time."""


class SerfRPC:
    """One RPC connection to a serf agent (blocking socket, timeouts on every read)."""

    def __init__(self, addr: str, timeout: float = 5.0) -> None:
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.seq = 0
        self.call("handshake", {"Version": 1})

    def _send(self, command: str, body: Any) -> int:
        self.seq += 1
        data = msgpack.packb({"Command": command, "Seq": self.seq}, use_bin_type=False)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=False)
        self.sock.sendall(data)
        return self.seq

    def _next(self) -> Any:
        while True:
            for obj in self.unpacker:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise SerfRPCError("serf closed the RPC connection")
            self.unpacker.feed(data)

    def call(self, command: str, request: Any = None, reply: bool = False) -> Any:
        """Send one command; return its reply body (when `reply`), raising on an error header."""
        seq = self._send(command, request)
        header = self._next()
        if header.get("Seq") != seq:
            raise SerfRPCError(f"unexpected answer {header!r} to {command} #{seq}")
        if header.get("Error"):
            raise SerfRPCError(f"{command}: {header['Error']}")
        return self._next() if reply else None

    def members(self) -> list[dict[str, Any]]:
        """Every member this agent knows, with Status alive / failed / left / leaving."""
        result: list[dict[str, Any]] = self.call("members", None, reply=True)["Members"]
        return result

    def join(self, addrs: list[str]) -> int:
        """Join through `addrs`; how many answered."""
        return int(self.call("join", {"Existing": addrs, "Replay": False}, reply=True)["Num"])

    def event(self, name: str, payload: bytes, coalesce: bool = False) -> None:
        """Fire a user event into the cluster."""
        self.call("event", {"Name": name, "Payload": payload, "Coalesce": coalesce})

    def leave(self) -> None:
        """Graceful leave (the agent then exits)."""
        self.call("leave")

    def force_leave(self, node: str) -> None:
        """Mark a failed node as left."""
        self.call("force-leave", {"Node": node})

    def stream_user_events(self) -> int:
        """Start streaming user events on this connection; read them with `next_event`."""
        seq = self._send("stream", {"Type": "user"})
        header = self._next()
        if header.get("Error"):
            raise SerfRPCError(f"stream: {header['Error']}")
        return seq

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next streamed record, or None after `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            self._next()  # the header of the record
            record: dict[str, Any] = self._next()
            return record
        except TimeoutError:
            return None

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


@dataclass
class SerfAgent:
    """A `serf agent` process started by a test or benchmark; `kill()` stops it by PID."""

    node: str
    bind: str  # "ip:port" for gossip (UDP and TCP)
    rpc: str  # "ip:port" for RPC
    workdir: Path
    encrypt: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Where the agent's output goes."""
        return self.workdir / f"serf-{self.node}.log"

    def start(self, timeout: float = 10.0) -> SerfAgent:
        """Launch and wait until its RPC port answers a handshake."""
        args = [SERF, "agent", "-node", self.node, "-bind", self.bind, "-rpc-addr", self.rpc, "-log-level", "debug"]
        if self.encrypt:
            args += ["-encrypt", self.encrypt]
        for k, v in self.tags.items():
            args += ["-tag", f"{k}={v}"]
        args += self.extra
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SerfRPCError(f"serf agent {self.node} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.rpc_client().close()
                return self
            except (OSError, SerfRPCError):
                if time.monotonic() > deadline:
                    raise SerfRPCError(f"serf agent {self.node} did not answer RPC in {timeout}s") from None
                time.sleep(0.02)

    def rpc_client(self) -> SerfRPC:
        """A new RPC connection."""
        return SerfRPC(self.rpc)

    def members(self) -> dict[str, str]:
        """Node name -> status, as this agent sees them."""
        client = self.rpc_client()
        try:
            return {m["Name"]: m["Status"] for m in client.members()}
        finally:
            client.close()

    def log(self) -> str:
        """What the agent printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL (a crash); waits for the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
