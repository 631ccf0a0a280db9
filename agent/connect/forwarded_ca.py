"""ForwardedCA: the mesh CA as a client agent reaches it, over :8300 through its ServerForwarder (runtime).

The server it calls forwards to the leader; RateLimited from the leader is retried here with the same
jittered backoff as on servers, so the agent's callers never see it.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from ..rpc.errors import RateLimited, ServerError
from .authority import SignedLeaf
from .ca_manager import SIGN_RETRY_BUDGET, backoff


class Caller(Protocol):
    """Something that calls a server's RPC method (ServerForwarder.call)."""

    async def call(self, method: str, args: Any) -> Any: ...


class ForwardedCA:
    """A client agent's CAAuthority."""

    def __init__(self, caller: Caller, retry_budget: float = SIGN_RETRY_BUDGET) -> None:
        self.caller = caller
        self.retry_budget = retry_budget
        self.rate_limited = 0  # RateLimited answers retried (figures, tests)

    async def sign(self, csr_pem: str, token: str | None = None) -> SignedLeaf:
        """The leader's signature of `csr_pem`, RateLimited retried for up to `retry_budget` seconds. `token`
        travels with the call: the server checks it (none, or "": the anonymous token)."""
        deadline = trio.current_time() + self.retry_budget
        attempt = 0
        args: dict[str, Any] = {"csr": csr_pem}
        if token:  # without one the call is as before ACLs
            args["token"] = token
        while True:
            try:
                return SignedLeaf.from_wire(await self.caller.call("connect_ca_sign", args))
            except RateLimited as exc:
                self.rate_limited += 1
                wait = backoff(exc.retry_after, attempt)
                if trio.current_time() + wait > deadline:
                    raise
                attempt += 1
                await trio.sleep(wait)

    async def set_config(self, provider: str, config: dict[str, Any],
                         force_without_cross_signing: bool = False, *, token: str | None = None) -> None:
        """Change the CA configuration through a server (which forwards to the leader); `token` travels with
        the call and needs operator:write there."""
        args: dict[str, Any] = {"provider": provider, "config": config,
                                "force_without_cross_signing": force_without_cross_signing}
        if token:
            args["token"] = token
        answer = await self.caller.call("connect_ca_set_config", args)
        if answer is not True:
            raise ServerError(f"connect_ca_set_config answered {answer!r}")
