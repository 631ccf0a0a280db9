"""The HTTP calls `meshagent lock` makes (sessions and KV with ?acquire/?release/?cas, blocking reads), each
answer checked field by field: the agent's bytes are as hostile as anyone's."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import httpx

MAX_VALUE = 512 * 1024  # bytes of a decoded value we accept (the agent's own KV limit)
MAX_PAIRS = 10_000  # entries under one prefix: a semaphore with more contenders is not ours


class LockError(Exception):
    """A lock or semaphore step failed; the message says which and why."""


class AgentUnavailable(LockError):
    """The agent answered 5xx or could not be reached (the monitor may retry these)."""


@dataclass(frozen=True)
class Pair:
    """One KV entry as the lock algorithms need it."""

    key: str
    value: bytes
    flags: int
    session: str
    modify_index: int


def _pair(raw: Any) -> Pair:
    if not isinstance(raw, dict):
        raise LockError("agent answered a KV entry that is not an object")
    key, flags, session, index = raw.get("Key"), raw.get("Flags", 0), raw.get("Session", ""), raw.get("ModifyIndex")
    value = raw.get("Value")
    if not isinstance(key, str):
        raise LockError("agent answered a KV entry without a string Key")
    if not isinstance(flags, int) or isinstance(flags, bool) or not 0 <= flags < 2 ** 64:
        raise LockError(f"agent answered a bad Flags for {key!r}")
    if session is None:
        session = ""
    if not isinstance(session, str):
        raise LockError(f"agent answered a bad Session for {key!r}")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise LockError(f"agent answered a bad ModifyIndex for {key!r}")
    if value is None:
        data = b""
    elif isinstance(value, str) and len(value) <= MAX_VALUE * 4 // 3 + 4:
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise LockError(f"agent answered a Value for {key!r} that is not base64") from None
    else:
        raise LockError(f"agent answered a bad Value for {key!r}")
    return Pair(key, data, flags, session, index)


class LockAPI:
    """The agent calls of Consul's lock.go and semaphore.go, over one httpx client."""

    def __init__(self, client: httpx.Client, wait: str = "15s") -> None:
        self.http = client
        self.wait = wait

    def _call(self, method: str, path: str, params: dict[str, Any] | None = None, content: bytes | None = None,
              json_body: Any = None, timeout: float = 30.0, ok404: bool = False) -> httpx.Response:
        try:
            resp = self.http.request(method, path, params=params, content=content, json=json_body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise AgentUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 500:
            raise AgentUnavailable(f"{method} {path}: Unexpected response code: {resp.status_code} "
                                   f"({resp.text.strip()[:200]})")
        if resp.status_code == 404 and ok404:
            return resp
        if resp.status_code != 200:
            raise LockError(f"{method} {path}: Unexpected response code: {resp.status_code} "
                            f"({resp.text.strip()[:200]})")
        return resp

    @staticmethod
    def _json(resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise LockError(f"agent answered {resp.request.url.path} with something that is not JSON") from None

    @staticmethod
    def _index(resp: httpx.Response) -> int:
        raw = resp.headers.get("X-Consul-Index", "")
        if not raw.isdigit() or len(raw) > 20:
            raise LockError(f"agent answered {resp.request.url.path} without a usable X-Consul-Index")
        return int(raw)

    def _bool(self, resp: httpx.Response) -> bool:
        out = self._json(resp)
        if not isinstance(out, bool):
            raise LockError(f"agent answered {resp.request.url.path} with {type(out).__name__}, not true/false")
        return out

    def _read(self, key: str, params: dict[str, Any], index: int, wait: float | None) -> tuple[Any, int]:
        params = {**params, "consistent": ""}
        timeout = 30.0
        if index > 0:
            params["index"] = index
            params["wait"] = self.wait if wait is None else f"{max(wait, 0.001):.3f}s"
            timeout += 15.0 if wait is None else wait  # the agent may hold the read up to wait + wait/16
        resp = self._call("GET", f"/v1/kv/{key}", params=params, timeout=timeout, ok404=True)
        new_index = self._index(resp)
        return (None if resp.status_code == 404 else self._json(resp)), new_index

    def get(self, key: str, index: int = 0, wait: float | None = None) -> tuple[Pair | None, int]:
        """The entry at `key` (None when absent) and the index; with `index`, block until it moves."""
        body, new_index = self._read(key, {}, index, wait)
        if body is None:
            return None, new_index
        if not isinstance(body, list) or len(body) != 1:
            raise LockError(f"agent answered GET {key!r} with something other than one entry")
        return _pair(body[0]), new_index

    def list(self, prefix: str, index: int = 0, wait: float | None = None) -> tuple[list[Pair], int]:
        """Every entry under `prefix`/ and the index; with `index`, block until it moves."""
        body, new_index = self._read(prefix + "/", {"recurse": ""}, index, wait)
        if body is None:
            return [], new_index
        if not isinstance(body, list) or len(body) > MAX_PAIRS:
            raise LockError(f"agent answered the list of {prefix!r} with something other than entries")
        return [_pair(raw) for raw in body], new_index

    def acquire(self, key: str, session: str, flags: int, value: bytes = b"") -> bool:
        """PUT ?acquire=: true when `session` now holds `key`."""
        return self._bool(self._call("PUT", f"/v1/kv/{key}", {"acquire": session, "flags": flags}, value))

    def release(self, key: str, session: str, flags: int, value: bytes = b"") -> bool:
        """PUT ?release=: true when `session` held `key` and no longer does."""
        return self._bool(self._call("PUT", f"/v1/kv/{key}", {"release": session, "flags": flags}, value))

    def cas(self, key: str, value: bytes, flags: int, modify_index: int) -> bool:
        """PUT ?cas=: true when `key` was still at `modify_index` (0: absent) and now holds `value`."""
        return self._bool(self._call("PUT", f"/v1/kv/{key}", {"cas": modify_index, "flags": flags}, value))

    def delete(self, key: str, modify_index: int | None = None) -> bool:
        """DELETE the key (?cas= when `modify_index` is given): true when done."""
        params = {} if modify_index is None else {"cas": modify_index}
        return self._bool(self._call("DELETE", f"/v1/kv/{key}", params))

    def session_create(self, name: str, ttl: str, lock_delay: str) -> str:
        """A new session on the agent's node (node checks: serfHealth, behavior release): its ID."""
        body = {"Name": name, "TTL": ttl, "LockDelay": lock_delay, "Behavior": "release"}
        out = self._json(self._call("PUT", "/v1/session/create", json_body=body))
        sid = out.get("ID") if isinstance(out, dict) else None
        if not isinstance(sid, str) or not 0 < len(sid) <= 64 or "/" in sid:
            raise LockError("agent answered PUT /v1/session/create without a usable ID")
        return sid

    def session_renew(self, sid: str) -> bool:
        """Renew the session's TTL: False when the session is gone (404)."""
        return self._call("PUT", f"/v1/session/renew/{sid}", ok404=True).status_code == 200

    def session_destroy(self, sid: str) -> None:
        """Destroy the session (its held keys are released)."""
        self._call("PUT", f"/v1/session/destroy/{sid}")
