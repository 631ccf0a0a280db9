"""run_agent: the agent process's one entry point (what `meshagent agent` calls), with failures as text.

The CLI parses flags and loads config; everything from logging set-up to the agent's last task lives here, so
cli/ needs nothing from the agent but this and config validation (tests/test_import_rules.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import trio

from .agent import Agent, AgentError
from .config.types import AgentConfig
from .logs import setup_logging


def run_agent(config: AgentConfig, reload_config: Callable[[], AgentConfig]) -> list[str]:
    """Set up logging and run an agent until it stops; the error lines to print (empty when it ended well)."""
    try:
        setup_logging(config.log_level, config.log_json)
    except ValueError as exc:
        return [f"==> Error: {exc}"]
    started = False

    async def run() -> None:
        nonlocal started
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: instance.run(task_status, banner=sys.stdout,
                                                                 handle_signals=True))
            started = True

    # Once the agent has started, a failure is no start-up error (a full disk used to say "starting").
    def failed(exc: BaseException) -> str:
        return f"==> Error: agent stopped: {exc}" if started else f"==> Error starting agent: {exc}"

    try:
        instance = Agent(config, reload_config=reload_config)
        trio.run(run)
    except (AgentError, OSError) as exc:
        return [failed(exc)]
    except BaseExceptionGroup as group:
        # A component failing at start-up arrives wrapped by the nursery that started it.
        known, rest = group.split((AgentError, OSError))
        if rest is not None or known is None:
            raise
        return [failed(exc) for exc in _leaves(known)]
    if instance.join_failed:
        return ["==> Error: max join retry exhausted, exiting"]
    return []


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for sub in group.exceptions for leaf in _leaves(sub)]
    return [group]
