"""One run of an HTTP, TCP or script check: returns (status, output). Never raises for a failing target."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess

import trio

from ..config.types import CheckDefinition
from .thresholds import CRITICAL, PASSING, WARNING

OUTPUT_MAX = 4096
USER_AGENT = "meshagent Health Check"


def _clip(text: str) -> str:
    return text if len(text) <= OUTPUT_MAX else text[:OUTPUT_MAX] + " ... (Output truncated)"


async def run_http(check: CheckDefinition) -> tuple[str, str]:
    """2xx passing, 429 warning, anything else (or no answer) critical."""
    # Imported on first use: httpx (and the rich it pulls in) is about 7 MB that an agent without HTTP checks
    # never needs.
    import httpx

    timeout = check.timeout or 10.0
    verify: ssl.SSLContext | bool = True
    if check.tls_skip_verify:
        verify = False
    headers = {k: ", ".join(v) for k, v in check.header.items()}
    headers.setdefault("User-Agent", USER_AGENT)
    try:
        async with httpx.AsyncClient(verify=verify, timeout=timeout,
                                     follow_redirects=not check.disable_redirects) as client:
            with trio.fail_after(timeout):
                resp = await client.request(check.method or "GET", check.http, headers=headers,
                                            content=check.body.encode() if check.body else None)
    except trio.TooSlowError:
        return CRITICAL, f"HTTP {check.method} {check.http}: timed out after {timeout:g}s"
    except (httpx.HTTPError, OSError, ValueError, ssl.SSLError) as exc:
        return CRITICAL, f"HTTP {check.method} {check.http}: {type(exc).__name__}: {exc}"
    code = resp.status_code
    body = resp.text[:OUTPUT_MAX]
    output = _clip(f"HTTP {check.method} {check.http}: {code} {resp.reason_phrase} Output: {body}")
    if 200 <= code < 300:
        return PASSING, output
    if code == 429:
        return WARNING, output
    return CRITICAL, output


async def run_tcp(check: CheckDefinition) -> tuple[str, str]:
    """Passing when a TCP connection opens within the timeout."""
    host, _, port = check.tcp.rpartition(":")
    host = host.strip("[]")
    timeout = check.timeout or 10.0
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, int(port))
        await stream.aclose()
    except trio.TooSlowError:
        return CRITICAL, f"TCP connect {check.tcp}: timed out after {timeout:g}s"
    except (OSError, ValueError) as exc:
        return CRITICAL, f"TCP connect {check.tcp}: {exc}"
    return PASSING, f"TCP connect {check.tcp}: Success"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def run_script(check: CheckDefinition) -> tuple[str, str]:
    """Exit 0 passing, 1 warning, anything else critical; on timeout the whole process group is killed."""
    timeout = check.timeout or 30.0
    try:
        proc = await trio.lowlevel.open_process(check.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        return CRITICAL, f"Failed to start {check.args[0]!r}: {exc}"
    chunks: list[bytes] = []
    size = 0
    assert proc.stdout is not None
    try:
        with trio.fail_after(timeout):
            while True:
                data = await proc.stdout.receive_some(65536)
                if not data:
                    break
                if size < OUTPUT_MAX + 1:
                    chunks.append(bytes(data))
                    size += len(data)
            code = await proc.wait()
    except trio.TooSlowError:
        _kill_group(proc.pid)
        with trio.CancelScope(shield=True):
            await proc.wait()
        return CRITICAL, f"Timed out ({timeout:g}s) running check"
    except BaseException:
        # Cancelled (check removed, agent stopping): never leave the script's process tree behind.
        _kill_group(proc.pid)
        with trio.CancelScope(shield=True):
            await proc.wait()
        raise
    finally:
        await proc.stdout.aclose()
    _kill_group(proc.pid)  # children the script left running in its group
    output = _clip(b"".join(chunks).decode(errors="replace"))
    if code == 0:
        return PASSING, output
    if code == 1:
        return WARNING, output
    return CRITICAL, output
