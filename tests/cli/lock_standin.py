"""A small HTTP stand-in for the agent's session and KV-lock API (Consul's semantics: acquire/release, CAS,
lock-delay after an invalidation, blocking reads with X-Consul-Index), for `meshagent lock`'s tests on
127.0.51.N. It is a real server on a real socket; only the catalog behind it is a dict."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Entry:
    value: bytes
    flags: int
    session: str
    lock_index: int
    create_index: int
    modify_index: int


class Store:
    """Sessions and keys under one condition variable; every write bumps `index` and wakes blocked reads."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.index = 1
        self.kv: dict[str, Entry] = {}
        self.sessions: dict[str, float] = {}  # id -> lock delay (s)
        self.delay_until: dict[str, float] = {}
        self.renewals = 0
        self.garbage: str | None = None  # a path prefix answered with a non-JSON body (hostile agent)

    def _bump(self) -> int:
        self.index += 1
        self.cond.notify_all()
        return self.index

    def invalidate(self, sid: str) -> None:
        """What the servers do when a session's node check fails: release its keys with lock-delay."""
        with self.cond:
            self.sessions.pop(sid, None)
            idx = self._bump()
            for key, entry in self.kv.items():
                if entry.session == sid:
                    entry.session, entry.modify_index = "", idx
                    self.delay_until[key] = time.monotonic() + 0.0  # lock-delay 0 here: tests stay fast

    def holder(self, key: str) -> str:
        with self.cond:
            entry = self.kv.get(key)
            return entry.session if entry else ""

    def put_plain(self, key: str, value: bytes, flags: int) -> None:
        with self.cond:
            idx = self._bump()
            self.kv[key] = Entry(value, flags, "", 0, idx, idx)

    def row(self, key: str, e: Entry) -> dict[str, Any]:
        return {"Key": key, "Value": base64.b64encode(e.value).decode() if e.value else None, "Flags": e.flags,
                "Session": e.session or None, "LockIndex": e.lock_index, "CreateIndex": e.create_index,
                "ModifyIndex": e.modify_index}


class Handler(BaseHTTPRequestHandler):
    """Routes the handful of endpoints `meshagent lock` calls."""

    store: Store
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, index: int | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if index is not None:
            self.send_header("X-Consul-Index", str(index))
        self.end_headers()
        self.wfile.write(data)

    def _parts(self) -> tuple[str, dict[str, str], bytes]:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        size = int(self.headers.get("Content-Length") or 0)
        return url.path, query, self.rfile.read(size) if size else b""

    def do_GET(self) -> None:
        path, q, _ = self._parts()
        st = self.store
        if st.garbage and path.startswith(st.garbage):
            return self._send(200, None, 5, raw=b"<html>not json")
        key = path.removeprefix("/v1/kv/")
        with st.cond:
            if "index" in q:
                deadline = time.monotonic() + min(float(q.get("wait", "15s").rstrip("s")), 2.0)
                while st.index <= int(q["index"]) and time.monotonic() < deadline:
                    st.cond.wait(deadline - time.monotonic())
            if "recurse" in q:
                rows = [st.row(k, e) for k, e in sorted(st.kv.items()) if k.startswith(key)]
            else:
                rows = [st.row(key, st.kv[key])] if key in st.kv else []
            index = st.index
        if not rows:
            return self._send(404, None, index, raw=b"")
        self._send(200, rows, index)

    def do_DELETE(self) -> None:
        path, q, _ = self._parts()
        key, st = path.removeprefix("/v1/kv/"), self.store
        with st.cond:
            entry = st.kv.get(key)
            if "cas" in q and (entry.modify_index if entry else 0) != int(q["cas"]):
                return self._send(200, False)
            st.kv.pop(key, None)
            st._bump()
        self._send(200, True)

    def do_PUT(self) -> None:
        path, q, body = self._parts()
        st = self.store
        with st.cond:
            if path == "/v1/session/create":
                sid = str(uuid.uuid4())
                st.sessions[sid] = 0.0
                st._bump()
                return self._send(200, {"ID": sid})
            if path.startswith("/v1/session/renew/"):
                sid = path.rsplit("/", 1)[1]
                st.renewals += 1
                return self._send(200, [{"ID": sid}]) if sid in st.sessions else self._send(404, None, raw=b"")
            if path.startswith("/v1/session/destroy/"):
                sid = path.rsplit("/", 1)[1]
                st.cond.release()
                try:
                    st.invalidate(sid)
                finally:
                    st.cond.acquire()
                return self._send(200, True)
            key = path.removeprefix("/v1/kv/")
            self._send(200, self._kv_put(key, q, body))

    def _kv_put(self, key: str, q: dict[str, str], body: bytes) -> bool:
        st = self.store
        entry, flags = st.kv.get(key), int(q.get("flags", "0"))
        if "acquire" in q:
            sid = q["acquire"]
            if sid not in st.sessions or (entry and entry.session and entry.session != sid):
                return False
            if time.monotonic() < st.delay_until.get(key, 0.0):
                return False
            idx = st._bump()
            if entry is None:
                st.kv[key] = Entry(body, flags, sid, 1, idx, idx)
            else:
                entry.lock_index += 0 if entry.session == sid else 1
                entry.value, entry.flags, entry.session, entry.modify_index = body, flags, sid, idx
            return True
        if "release" in q:
            if entry is None or entry.session != q["release"]:
                return False
            entry.value, entry.flags, entry.session, entry.modify_index = body, flags, "", st._bump()
            return True
        if "cas" in q and (entry.modify_index if entry else 0) != int(q["cas"]):
            return False
        idx = st._bump()
        if entry is None:
            st.kv[key] = Entry(body, flags, "", 0, idx, idx)
        else:
            entry.value, entry.flags, entry.modify_index = body, flags, idx
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a lock process killed mid-read leaves a broken pipe: expected here, not worth a traceback


class StandIn:
    """The running stand-in: `url`, its `store`, `close()`."""

    def __init__(self, host: str) -> None:
        self.store = Store()
        handler = type("BoundHandler", (Handler,), {"store": self.store})
        self.server = _Server((host, 0), handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
