"""The CA's RPC edges: a sign answer with impossible times is refused, an oversized CSR or config is refused
before any forwarding, and nested batches cannot hide (or blow the stack looking for) a privileged op."""

from __future__ import annotations

import math

import msgpack
import pytest
import trio
from meshagent.agent.catalog import commands
from meshagent.agent.connect import ca
from meshagent.agent.connect.authority import SignedLeaf
from meshagent.agent.rpc.errors import Rejected, ServerError
from meshagent.agent.server.endpoints import privileged_op

from tests.connect.test_ca_manager import _manager

GOOD = {"cert_pem": "x", "serial_number": "0a", "service": "web", "service_uri": "spiffe://t/ns/default/dc/d/svc/web",
        "valid_after": 1.0e9, "valid_before": 1.1e9, "root_id": "r", "intermediate_pems": [], "index": 3}


def test_a_good_answer_reads() -> None:
    assert SignedLeaf.from_wire(GOOD).valid_before == 1.1e9


@pytest.mark.parametrize("change", [
    {"valid_after": math.nan}, {"valid_before": math.inf}, {"valid_before": 1e300}, {"valid_after": -1.0},
    {"valid_after": 1.2e9},  # after valid_before
])
def test_impossible_leaf_times_are_refused(change: dict[str, float]) -> None:
    with pytest.raises(ServerError):
        SignedLeaf.from_wire({**GOOD, **change})


def test_oversized_csr_and_config_are_refused_at_the_rpc_edge() -> None:
    async def main() -> None:
        manager = _manager()
        with pytest.raises(Rejected, match="larger than"):
            await manager.rpc_sign({"csr": "x" * (ca.MAX_CSR_BYTES + 1)})
        with pytest.raises(Rejected, match="Config keys"):
            await manager.rpc_set_config({"config": {f"k{i}": 1 for i in range(65)}})

    trio.run(main)


def test_privileged_ops_are_found_one_batch_deep_and_nesting_cannot_recurse() -> None:
    ca_cmd = msgpack.packb(commands.connect_ca("prune", before=1.0), use_bin_type=True)
    assert privileged_op(ca_cmd) == "connect-ca"
    assert privileged_op(msgpack.packb({"op": "batch", "commands": [ca_cmd]}, use_bin_type=True)) == "connect-ca"
    nested = ca_cmd
    for _ in range(5000):  # deeper than Python's recursion limit if every level were looked into
        nested = msgpack.packb({"op": "batch", "commands": [nested]}, use_bin_type=True)
    assert privileged_op(nested) is None  # the FSM refuses a batch inside a batch, so nothing hides there
