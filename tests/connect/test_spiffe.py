"""Service SPIFFE IDs: Consul's form round-trips, and every malformed or foreign ID is refused by name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshagent.agent.connect.spiffe import (
    MAX_ID_BYTES,
    ServiceID,
    SpiffeIDError,
    parse_service_id,
    service_id,
)

TD = "11111111-2222-3333-4444-555555555555.mesh"


def test_consuls_form_parses_into_its_parts() -> None:
    sid = parse_service_id(f"spiffe://{TD}/ns/default/dc/dc1/svc/web")
    assert sid == ServiceID(TD, "default", "dc1", "web")
    assert sid.uri() == f"spiffe://{TD}/ns/default/dc/dc1/svc/web"


@pytest.mark.parametrize(("uri", "part"), [
    ("https://x.mesh/ns/default/dc/dc1/svc/web", "must start with spiffe://"),
    ("spiffe:///ns/default/dc/dc1/svc/web", "empty trust domain"),
    ("spiffe://X.mesh/ns/default/dc/dc1/svc/web", "trust domain"),
    ("spiffe://x.mesh:8443/ns/default/dc/dc1/svc/web", "trust domain"),
    ("spiffe://user@x.mesh/ns/default/dc/dc1/svc/web", "trust domain"),
    ("spiffe://x.mesh", "no path"),
    ("spiffe://x.mesh/", "is not /ns/"),
    ("spiffe://x.mesh/ns/default/dc/dc1/svc/web/extra", "is not /ns/"),
    ("spiffe://x.mesh/ns/default/dc/dc1/agent/web", "is not /ns/"),
    ("spiffe://x.mesh/ap/p/ns/default/dc/dc1/svc/web", "is not /ns/"),
    ("spiffe://x.mesh/ns/default/dc//svc/web", "empty datacenter"),
    ("spiffe://x.mesh/ns/default/dc/dc1/svc/", "empty service"),
    ("spiffe://x.mesh/ns/default/dc/dc1/svc/..", "service '..'"),
    ("spiffe://x.mesh/ns/default/dc/dc1/svc/we%2Fb", "service 'we%2Fb'"),
    ("spiffe://x.mesh/ns/default/dc/dc1/svc/web?x=1", "service 'web?x=1'"),
    ("spiffe://x.mesh/ns/default/dc/dc1/svc/web#f", "service 'web#f'"),
    ("spiffe://x.mesh/ns/default/dc/dc 1/svc/web", "datacenter 'dc 1'"),
    ("spiffe://x.mesh/ns/dé/dc/dc1/svc/web", "namespace 'dé'"),
    ("spiffe://x.mesh/ns/default/dc/dc1/svc/" + "w" * MAX_ID_BYTES, "longer than"),
])
def test_a_malformed_id_is_refused_naming_the_part(uri: str, part: str) -> None:
    with pytest.raises(SpiffeIDError) as err:
        parse_service_id(uri)
    assert part in str(err.value)


def test_a_non_string_is_refused() -> None:
    with pytest.raises(SpiffeIDError):
        parse_service_id(b"spiffe://x.mesh/ns/default/dc/dc1/svc/web")  # type: ignore[arg-type]


_segment = st.text(st.sampled_from("abcXYZ019.-_"), min_size=1, max_size=40).filter(lambda s: s not in (".", ".."))
_domain = st.text(st.sampled_from("abcz019.-_"), min_size=1, max_size=60)


@given(_domain, _segment, _segment, _segment)
def test_every_valid_id_round_trips(domain: str, ns: str, dc: str, svc: str) -> None:
    sid = service_id(domain, dc, svc, ns)
    assert parse_service_id(sid.uri()) == sid


@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_is_refused_but_never_crashes(text: str) -> None:
    for candidate in (text, f"spiffe://{text}", f"spiffe://x.mesh/ns/default/dc/dc1/svc/{text}"):
        try:
            sid = parse_service_id(candidate)
        except SpiffeIDError:
            continue
        assert sid.uri() == candidate
