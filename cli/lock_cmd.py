"""`meshagent lock [-n N] [-timeout D] PREFIX CHILD...`: run CHILD only while a lock (or one of N semaphore slots)
at PREFIX is held, as `consul lock` does; SIGTERM (then SIGKILL after a grace) when it is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

import click

from .http_client import AgentClient, fail, http_options
from .lock_algo import MAX_LIMIT, Lock, Semaphore, Session
from .lock_kv import LockAPI, LockError

KILL_GRACE_S = 5.0  # Consul's grace between SIGTERM and SIGKILL
MAX_PREFIX = 256  # characters of PREFIX: room for "/<session id>" under the agent's key limit


def _count(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    # Go's flag package accepts -n=2; click reads "-n=2" as -n with the value "=2".
    text = value[1:] if value.startswith("=") else value
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise click.BadParameter(f"must be a whole number from 1 to {MAX_LIMIT}, not {value!r}")
    return int(text)


def _timeout(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from ..agent.config.duration import parse_duration  # loaded only by the command that needs it
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds < 0:
        raise click.BadParameter(f"must not be negative, not {value!r}")
    return seconds or None


def _interrupted(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM is a shutdown like Ctrl-C: release, then exit


@click.command("lock", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-n", "--n", "limit", default="1", callback=_count, help="Holders allowed (> 1: a semaphore).")
@click.option("-timeout", "--timeout", "timeout", default=None, callback=_timeout,
              help="Longest wait to acquire, e.g. 30s (default: wait forever).")
@click.option("-name", "--name", "name", default=None, help="The session's name.")
@click.option("-pass-stdin", "--pass-stdin", is_flag=True, help="Give the child this command's stdin.")
@click.option("-verbose", "--verbose", is_flag=True, help="Say each step on stderr.")
@click.option("-monitor-retry", "--monitor-retry", "monitor_retry", type=click.IntRange(0, 1000), default=3,
              help="Retries after a 5xx while watching the held lock (default 3).")
@http_options
@click.argument("prefix")
@click.argument("child", nargs=-1, type=click.UNPROCESSED, required=True)
def lock(prefix: str, child: tuple[str, ...], limit: int, timeout: float | None, name: str | None,
         pass_stdin: bool, verbose: bool, monitor_retry: int, http_addr: str | None, token: str | None) -> None:
    """Run CHILD (through `sh -c`) while holding the lock at PREFIX; exit with the child's code."""
    prefix = prefix.strip("/")
    if not prefix or len(prefix) > MAX_PREFIX or any(ord(ch) < 32 for ch in prefix):
        fail(f"Error! PREFIX must be 1 to {MAX_PREFIX} printable characters")
    script = " ".join(child)
    shown = script if len(script) <= 80 else script[:77] + "..."  # the default name stays within the limit
    name = name or f"meshagent lock for '{shown}' at '{prefix[:120]}'"
    if len(name) > 256:
        fail("Error! -name is longer than 256 characters")
    signal.signal(signal.SIGTERM, _interrupted)
    def say(text: str) -> None:
        if verbose:
            click.echo(text, err=True)

    api = LockAPI(AgentClient(http_addr, token).http)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        session = Session(api, name)
    except LockError as exc:
        fail(f"Lock acquisition failed: {exc}")
    except KeyboardInterrupt:
        fail("Shutdown triggered or timeout during lock acquisition")
    try:
        if limit == 1:
            holder: Lock | Semaphore = Lock(api, session, prefix, monitor_retry)
            say(f"Setting up lock at path: {holder.key}")
        else:
            holder = Semaphore(api, session, prefix, limit, monitor_retry)
            say(f"Setting up semaphore (limit {limit}) at prefix: {prefix}")
        say("Attempting lock acquisition")
        got = holder.acquire(deadline)
    except (KeyboardInterrupt, LockError) as exc:
        session.stop()
        fail("Shutdown triggered or timeout during lock acquisition" if isinstance(exc, KeyboardInterrupt)
             else f"Lock acquisition failed: {exc}")
    if not got:
        session.stop()
        fail("Shutdown triggered or timeout during lock acquisition")
    _run_held(holder, session, script, pass_stdin, say)


def _run_held(holder: Lock | Semaphore, session: Session, script: str, pass_stdin: bool,
              say: Callable[[str], None]) -> NoReturn:
    """Run the child while held; on its exit, a lost lock or a shutdown: stop it, release, clean up, exit."""
    wake = threading.Event()
    say("Starting handler")
    env = {**os.environ, "CONSUL_LOCK_HELD": "true"}
    # Its own process group: on a lost lock the whole tree `sh -c` started gets the signal, not only sh.
    proc = subprocess.Popen(["sh", "-c", script], stdin=None if pass_stdin else subprocess.DEVNULL, env=env,
                            start_new_session=True)

    def child_done() -> None:
        proc.wait()
        wake.set()

    def lock_lost() -> None:
        holder.lost.wait()
        wake.set()

    threading.Thread(target=child_done, daemon=True).start()
    threading.Thread(target=lock_lost, daemon=True).start()
    shutdown = False
    try:
        wake.wait()
    except KeyboardInterrupt:
        shutdown = True
    if proc.poll() is None:
        click.echo("Shutdown triggered, killing child" if shutdown else "Lock lost, killing child", err=True)
        _kill(proc)
    else:
        say("Child terminated")
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the release short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        holder.release()
    except LockError as exc:
        click.echo(f"Lock release failed: {exc}", err=True)
        code = code or 1
    session.stop()
    try:
        say("Cleanup succeeded" if holder.destroy() else "Cleanup aborted, lock in use")
    except LockError as exc:
        click.echo(f"Lock cleanup failed: {exc}", err=True)
        code = code or 1
    sys.exit(code)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group; SIGKILL it after the grace."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(KILL_GRACE_S)
        return
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
