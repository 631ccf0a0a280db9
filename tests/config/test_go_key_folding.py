"""Service and check fields match case-insensitively, as Consul's Go decoders match them (py-consul sends
`serviceid` and `enabletagoverride`); an unknown field is still refused."""

from __future__ import annotations

import pytest
from meshagent.agent.config.errors import ConfigErrors
from meshagent.agent.config.loader import parse_check, parse_service
from meshagent.agent.config.types import Source


def test_lowercase_go_field_names_are_the_fields_they_fold_to() -> None:
    check = parse_check({"name": "db-ttl", "ttl": "1h", "serviceid": "db", "DeregisterCriticalServiceAFTER": "5m"},
                        Source("<api>"))
    assert check.service_id == "db"
    assert check.deregister_critical_service_after == 300.0
    svc = parse_service({"name": "web", "port": 80, "enabletagoverride": True}, Source("<api>"))
    assert svc.enable_tag_override is True


def test_a_field_that_folds_to_nothing_known_is_still_refused() -> None:
    with pytest.raises(ConfigErrors, match="servicename: unknown field"):
        parse_check({"name": "c", "ttl": "1h", "servicename": "db"}, Source("<api>"))


def test_the_same_field_twice_in_two_spellings_is_an_error() -> None:
    with pytest.raises(ConfigErrors, match="given twice"):
        parse_check({"name": "c", "ttl": "1h", "ServiceID": "a", "serviceid": "b"}, Source("<api>"))
