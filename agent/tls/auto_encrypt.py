"""auto_encrypt on a client agent: ask a server to sign a certificate for us, and renew it at half its life."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..rpc.client import RPCClient
from ..rpc.errors import ServerError
from .policy import AUTO_ENCRYPT_DAYS, RPCTLS, SIGN_METHOD

log = logging.getLogger("meshagent.tls")

RETRY_INTERVAL = 1.0


async def request_certificate(tls: RPCTLS, address: str, node: str, timeout: float = 5.0) -> None:
    """One signing call to the server at `address` over the auto_encrypt channel; installs the answer."""
    args, key = tls.sign_request(node)
    client = RPCClient(address, tls, bootstrap=True)
    outcome: list[object] = []
    try:
        async with trio.open_nursery() as nursery:  # owns the call's reader task, for this call only
            try:
                outcome.append(await client.call(nursery, SIGN_METHOD, args, timeout))
            except ServerError as exc:
                outcome.append(exc)  # raised below, outside the nursery (not as an ExceptionGroup)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        client.close()
    if isinstance(outcome[0], ServerError):
        raise outcome[0]
    tls.accept_signed(outcome[0], key)


async def keep_certificate(tls: RPCTLS, servers: Callable[[], list[str]], node: str,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Get our client certificate from the first server that signs it, then renew it at half its life."""
    task_status.started()
    while True:
        while True:
            errors = []
            for address in servers():
                try:
                    await request_certificate(tls, address, node)
                    log.info("auto_encrypt: got a client certificate from %s", address)
                    break
                except (ServerError, ValueError) as exc:
                    errors.append(f"{address}: {exc}")
            else:
                if errors:
                    log.warning("auto_encrypt: no server signed our certificate: %s", "; ".join(errors))
                await trio.sleep(RETRY_INTERVAL)
                continue
            break
        await trio.sleep(AUTO_ENCRYPT_DAYS * 86400 / 2)
