"""ACL tokens, policies, roles: hostile bodies (each refusal names its field), Consul's JSON, secrets hidden."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from meshagent.agent.acl.objects import (
    HIDDEN_SECRET,
    ACLObjectError,
    Link,
    NodeIdentity,
    ServiceIdentity,
    policy_from_request,
    role_from_request,
    token_from_request,
)

NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
PID = "11111111-2222-4333-8444-555555555555"
AID = "aaaaaaaa-2222-4333-8444-555555555555"
SID = "bbbbbbbb-2222-4333-8444-555555555555"


def test_policy_round_trip() -> None:
    body = {"ID": PID, "Name": "web-write", "Description": "d", "Rules": 'service "web" { policy = "write" }',
            "Datacenters": ["dc1"]}
    p = policy_from_request(body)
    assert (p.id, p.name, p.rules, p.datacenters) == (PID, "web-write", body["Rules"], ("dc1",))
    api = p.to_api()
    assert {k: api[k] for k in body} == body
    assert api["Hash"] and api["CreateIndex"] == 0 == api["ModifyIndex"]
    assert policy_from_request(api) == p  # what we render reads back the same
    assert policy_from_request({"Name": "x"}).id != policy_from_request({"Name": "x"}).id  # generated


def test_policy_hash_follows_content() -> None:
    a = policy_from_request({"Name": "a", "Rules": 'key "x" { policy = "read" }'})
    b = policy_from_request({"Name": "a", "Rules": 'key "x" { policy = "write" }'})
    assert a.hash != b.hash
    assert a.hash == policy_from_request({"ID": a.id, "Name": "a", "Rules": a.rules}).hash


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ({}, "Name"),
    ({"Name": 5}, "Name"),
    ({"Name": "has space"}, "Name"),
    ({"Name": "x" * 129}, "Name"),
    ({"Name": "p", "ID": "nope"}, "ID"),
    ({"Name": "p", "Rules": 7}, "Rules"),
    ({"Name": "p", "Description": "d" * 9000}, "Description"),
    ({"Name": "p", "Datacenters": "dc1"}, "Datacenters"),
    ({"Name": "p", "Datacenters": [""]}, "Datacenters[0]"),
    ({"Name": "p", "Datacenters": ["dc"] * 65}, "Datacenters"),
])
def test_policy_refusals_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(ACLObjectError) as exc:
        policy_from_request(body)
    assert str(exc.value).startswith(f"{field}:"), str(exc.value)


def test_policy_bad_rules_name_line_and_field() -> None:
    with pytest.raises(ACLObjectError) as exc:
        policy_from_request({"Name": "p", "Rules": 'key "a" { policy = "read" }\nservice "w" { policy = "fly" }'})
    msg = str(exc.value)
    assert msg.startswith("Rules:") and "line 2" in msg and "policy" in msg


def test_policy_id_from_url() -> None:
    assert policy_from_request({"Name": "p"}, policy_id=PID).id == PID
    assert policy_from_request({"Name": "p", "ID": PID.upper()}, policy_id=PID).id == PID
    with pytest.raises(ACLObjectError, match=r"^ID: .*URL"):
        policy_from_request({"Name": "p", "ID": AID}, policy_id=PID)


def test_role_round_trip() -> None:
    body = {"ID": PID, "Name": "Web_Role-1", "Description": "r",
            "Policies": [{"ID": AID, "Name": "web-write"}],
            "ServiceIdentities": [{"ServiceName": "web", "Datacenters": ["dc1"]}, {"ServiceName": "db"}],
            "NodeIdentities": [{"NodeName": "n-1", "Datacenter": "dc1"}]}
    r = role_from_request(body)
    assert r.policies == (Link(AID, "web-write"),)
    assert r.service_identities == (ServiceIdentity("web", ("dc1",)), ServiceIdentity("db"))
    assert r.node_identities == (NodeIdentity("n-1", "dc1"),)
    api = r.to_api()
    assert {k: api[k] for k in body} == body
    assert role_from_request(api) == r


def test_role_empty_lists_omitted_and_links_deduplicated() -> None:
    r = role_from_request({"Name": "r", "Policies": [{"Name": "a"}, {"Name": "a"}]})
    assert r.policies == (Link("", "a"),)
    assert "ServiceIdentities" not in r.to_api() and "NodeIdentities" not in r.to_api()


@pytest.mark.parametrize(("body", "field"), [
    ({"Name": "x" * 257}, "Name"),
    ({"Name": "a.b"}, "Name"),
    ({"Name": "r", "Policies": {}}, "Policies"),
    ({"Name": "r", "Policies": ["p"]}, "Policies[0]"),
    ({"Name": "r", "Policies": [{}]}, "Policies[0]"),
    ({"Name": "r", "Policies": [{"ID": "x"}]}, "Policies[0].ID"),
    ({"Name": "r", "Policies": [{"Name": "bad name"}]}, "Policies[0].Name"),
    ({"Name": "r", "Policies": [{"Name": f"p{i}"} for i in range(257)]}, "Policies"),
    ({"Name": "r", "ServiceIdentities": [{}]}, "ServiceIdentities[0].ServiceName"),
    ({"Name": "r", "ServiceIdentities": [{"ServiceName": "Web"}]}, "ServiceIdentities[0].ServiceName"),
    ({"Name": "r", "ServiceIdentities": [{"ServiceName": "w" * 257}]}, "ServiceIdentities[0].ServiceName"),
    ({"Name": "r", "ServiceIdentities": [{"ServiceName": "w", "Datacenters": [1]}]},
     "ServiceIdentities[0].Datacenters[0]"),
    ({"Name": "r", "ServiceIdentities": [3]}, "ServiceIdentities[0]"),
    ({"Name": "r", "NodeIdentities": [{"NodeName": "n"}]}, "NodeIdentities[0].Datacenter"),
    ({"Name": "r", "NodeIdentities": [{"NodeName": "-n", "Datacenter": "dc1"}]}, "NodeIdentities[0].NodeName"),
])
def test_role_refusals_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(ACLObjectError) as exc:
        role_from_request(body)
    assert str(exc.value).startswith(f"{field}:"), str(exc.value)


def _token(**extra: Any) -> dict[str, Any]:
    return {"AccessorID": AID, "SecretID": SID, "Description": "t", **extra}


def test_token_round_trip_and_secret_hidden() -> None:
    body = _token(Policies=[{"ID": PID, "Name": "p"}], Roles=[{"ID": AID, "Name": "r"}],
                  ServiceIdentities=[{"ServiceName": "web"}], NodeIdentities=[{"NodeName": "n1", "Datacenter": "dc1"}],
                  Local=True)
    t = token_from_request(body, now=NOW)
    shown = t.to_api(secret_visible=True)
    assert {k: shown[k] for k in body} == body
    assert shown["CreateTime"] == "2026-12-05T08:00:00Z" and "ExpirationTime" not in shown
    hidden = t.to_api(secret_visible=False)
    assert hidden["SecretID"] == HIDDEN_SECRET and SID not in repr(hidden) and SID not in repr(t)
    again = token_from_request(shown, now=NOW)
    assert again == t


def test_token_generates_ids_and_lowercases() -> None:
    t = token_from_request({}, now=NOW)
    assert t.accessor_id != t.secret_id and len(t.secret_id) == 36 and not t.local
    assert token_from_request(_token(SecretID=SID.upper()), now=NOW).secret_id == SID


def test_token_expiration_ttl_and_time() -> None:
    t = token_from_request(_token(ExpirationTTL="1h"), now=NOW)
    assert t.expiration_time == NOW + timedelta(hours=1)
    assert t.to_api(True)["ExpirationTime"] == "2026-12-05T09:00:00Z"
    assert not t.expired(NOW) and t.expired(NOW + timedelta(hours=1))
    u = token_from_request(_token(ExpirationTime="2026-12-05T10:30:00+02:00"), now=NOW)
    assert u.expiration_time == NOW + timedelta(minutes=30)
    assert token_from_request(u.to_api(True), now=NOW).expiration_time == u.expiration_time
    assert t.hash != token_from_request(_token(), now=NOW).hash


@pytest.mark.parametrize(("extra", "field"), [
    ({"AccessorID": "x"}, "AccessorID"),
    ({"AccessorID": "00000000-0000-0000-0000-000000000002"}, "AccessorID"),
    ({"AccessorID": 3}, "AccessorID"),
    ({"SecretID": "not-a-uuid"}, "SecretID"),
    ({"SecretID": 12}, "SecretID"),
    ({"Local": "yes"}, "Local"),
    ({"Description": ["x"]}, "Description"),
    ({"Roles": [{"Name": "a b"}]}, "Roles[0].Name"),
    ({"Policies": [{"Name": "p" * 129}]}, "Policies[0].Name"),
    ({"ExpirationTTL": "1h", "ExpirationTime": "2026-12-05T09:00:00Z"}, "ExpirationTTL"),
    ({"ExpirationTTL": "soon"}, "ExpirationTTL"),
    ({"ExpirationTTL": "-5m"}, "ExpirationTTL"),
    ({"ExpirationTTL": "30s"}, "ExpirationTTL"),
    ({"ExpirationTTL": "25h"}, "ExpirationTTL"),
    ({"ExpirationTTL": 3600}, "ExpirationTTL"),
    ({"ExpirationTime": "tomorrow"}, "ExpirationTime"),
    ({"ExpirationTime": "2026-12-05T09:00:00"}, "ExpirationTime"),
    ({"ExpirationTime": 5}, "ExpirationTime"),
    ({"ExpirationTime": "2026-12-05T07:00:00Z"}, "ExpirationTime"),
])
def test_token_refusals_name_the_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ACLObjectError) as exc:
        token_from_request(_token(**extra), now=NOW)
    assert str(exc.value).startswith(f"{field}:"), str(exc.value)


def test_bad_secret_is_not_echoed() -> None:
    with pytest.raises(ACLObjectError) as exc:
        token_from_request(_token(SecretID="my-real-password"), now=NOW)
    assert "my-real-password" not in str(exc.value)


def test_token_url_accessor_and_ttl_bounds_configurable() -> None:
    assert token_from_request({}, now=NOW, accessor_id=AID).accessor_id == AID
    with pytest.raises(ACLObjectError, match=r"^AccessorID:"):
        token_from_request(_token(), now=NOW, accessor_id=PID)
    assert token_from_request(_token(ExpirationTTL="10s"), now=NOW, min_ttl=5).expiration_time is not None
