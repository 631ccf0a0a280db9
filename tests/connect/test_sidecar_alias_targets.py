"""Alias checks follow their target service coming and going (review finding 4): a target registered
without checks turns the alias passing, a target deregistered turns it critical, and a standalone
connect-proxy loaded before the service it aliases does not stay critical for good."""

from __future__ import annotations

from meshagent.agent.config.loader import parse_service
from meshagent.agent.config.types import Source
from meshagent.agent.local_state import LocalState
from meshagent.agent.store import CatalogStore

from tests.support.wait import wait_for_async

from .test_sidecar_leftovers import _catalog_status, _scenario

MISSING = ("critical", "Service db could not be found on node n1")


def _status(local: LocalState, check_id: str) -> tuple[str, str]:
    check = local.checks()[check_id]
    return check.status, check.output


def _mirror(**extra: object) -> dict[str, object]:
    return {"Name": "mirror", "Port": 1, **extra,
            "Check": {"CheckID": "mirror", "Name": "m", "AliasService": "db"}}


def test_an_alias_follows_a_target_without_checks_coming_and_going() -> None:
    async def body(local: LocalState, store: CatalogStore) -> None:
        await local.register_service(parse_service(_mirror(), Source("<api>")))
        assert _status(local, "mirror") == MISSING
        await local.register_service(parse_service({"Name": "db", "Port": 5432}, Source("<api>")))
        assert _status(local, "mirror") == ("passing", "No checks found.")
        await wait_for_async(lambda: _catalog_status(store, "mirror") == "passing", 30)
        await local.deregister_service("db")
        assert _status(local, "mirror") == MISSING
        await wait_for_async(lambda: _catalog_status(store, "mirror") == "critical", 30)

    _scenario(body)


def test_an_alias_registered_after_its_target_turns_critical_when_the_target_goes() -> None:
    async def body(local: LocalState, store: CatalogStore) -> None:
        await local.register_service(parse_service({"Name": "db", "Port": 5432}, Source("<api>")))
        await local.register_service(parse_service(_mirror(), Source("<api>")))
        assert _status(local, "mirror")[0] == "passing"
        await local.deregister_service("db")
        assert _status(local, "mirror") == MISSING

    _scenario(body)


def test_a_standalone_proxy_loaded_before_its_target_follows_it() -> None:
    proxy = _mirror(Kind="connect-proxy", ID="db-proxy", Proxy={"DestinationServiceName": "db",
                                                                "DestinationServiceID": "db"})

    async def body(local: LocalState, store: CatalogStore) -> None:
        await local.load_files([parse_service(proxy, Source("<file>"))], [])
        assert _status(local, "mirror") == MISSING
        await local.register_service(parse_service({"Name": "db", "Port": 5432}, Source("<api>")))
        assert _status(local, "mirror")[0] == "passing"

    _scenario(body)
