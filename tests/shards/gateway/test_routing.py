"""Direct routing's server side (issue 16): each writer registers its client endpoint in the
control database (a migration, tested on a database of the schema before it), and the gateway
answers GetRouting with the slot map and those endpoints, to the roles that send work and to
no one else; a node says to ask the gateway."""

from __future__ import annotations

import itertools
import os

import grpc
import pytest

from core.authority import Role
from core.slots import SLOT_COUNT, SlotMap
from core.store import control as control_store
from core.store import schema
from core.store import shard as store
from shards import control
from shards.local.embedded_pg import EmbeddedPostgres
from shards.security.credentials import aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import security
from tests.support.helpers import in_process_cluster
from tests.support.processes import fetch_rows

_numbers = itertools.count(1)


async def test_the_client_endpoint_migration_keeps_what_todays_schema_registered(
    pg: EmbeddedPostgres,
) -> None:
    """A control database as the code before this migration leaves it (migrations 1-3, a
    registered shard): migrated in place, its endpoint and epoch kept, no client endpoint
    until its writer registers again, and then the writer's epoch still fences."""
    name = f"rt{os.getpid()}_{next(_numbers)}_control"
    await pg.create_database_async(name)
    connection = await control.connect(pg.dsn(name))
    try:
        await store.migrate(connection, schema.CONTROL_MIGRATIONS[:3])
        await connection.execute(
            "INSERT INTO shards (shard_id, endpoint, epoch) VALUES (0, 'old:1', 3)"
        )
        await control_store.prepare(connection)
        versions = await connection.fetch("SELECT version FROM tally_schema_migrations")
        assert sorted(r["version"] for r in versions) == [
            v for v, _, _ in schema.CONTROL_MIGRATIONS
        ]
        assert await control_store.shard_endpoints(connection) == {0: "old:1"}
        assert await control_store.client_endpoints(connection) == {}
        assert await control_store.register_shard(connection, 0, "old:2", 2, "c:2") == 3
        assert await control_store.client_endpoints(connection) == {}
        assert await control_store.register_shard(connection, 0, "new:1", 3, "c:1") is None
        assert await control_store.client_endpoints(connection) == {0: "c:1"}
    finally:
        await connection.close(timeout=5.0)
    rows = await fetch_rows(pg.dsn(name), "SELECT endpoint, epoch, client_endpoint FROM shards")
    assert [tuple(r) for r in rows] == [("new:1", 3, "c:1")]


def test_a_slot_map_in_ranges_covers_every_slot_once() -> None:
    moved = SlotMap.even(3).moved([0, 1, 2, 4000, 4095], 2)
    ranges = moved.ranges()
    owners = [owner for _, count, owner in ranges for _ in range(count)]
    assert tuple(owners) == moved.owners and len(owners) == SLOT_COUNT
    assert all(a[2] != b[2] for a, b in itertools.pairwise(ranges))
    assert SlotMap.even(1).ranges() == [(0, SLOT_COUNT, 0)]


async def _routing(channel: grpc.aio.Channel, known: int = 0) -> pb.GetRoutingResponse:
    stub = pb_grpc.LedgerStub(channel)
    answer: pb.GetRoutingResponse = await stub.GetRouting(
        pb.GetRoutingRequest(known_version=known), timeout=10
    )
    return answer


async def _refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _routing(channel)
    code: grpc.StatusCode = refused.value.code()
    return code


async def test_the_gateway_serves_routing_to_senders_only(pg: EmbeddedPostgres) -> None:
    prefix = f"rt{os.getpid()}_{next(_numbers)}"
    async with in_process_cluster(pg, prefix, 2) as cluster:
        target = cluster.target
        async with security.channel(target) as channel:
            answer = await _routing(channel)
            assert answer.version == 1 and answer.slot_count == SLOT_COUNT
            assert not answer.unchanged
            spans = [(r.first_slot, r.slot_count, r.shard_id) for r in answer.ranges]
            assert spans == SlotMap.even(2).ranges()
            endpoints = {s.shard_id: s.client_endpoint for s in answer.shards}
            assert endpoints == {n: node.target for n, node in enumerate(cluster.nodes)}
            again = await _routing(channel, known=answer.version)
            assert again.unchanged and again.version == 1 and not again.ranges
            # A body that is not a GetRoutingRequest: INVALID_ARGUMENT, never UNKNOWN.
            garbage = channel.unary_unary("/tally.v1.Ledger/GetRouting")
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await garbage(b"\xff\xff\xff", timeout=10)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A node's client listener: ask the gateway.
        async with security.channel(cluster.nodes[0].target) as node_channel:
            assert await _refused(node_channel) == grpc.StatusCode.FAILED_PRECONDITION
        scoped_poster = security.identity([Role.POSTER], ["cust-1/*"], name="route-poster")
        async with aio_channel(target, scoped_poster) as channel:
            assert (await _routing(channel)).version == 1
        monitor = security.identity([Role.MONITOR], ["cust-1/*"], name="route-monitor")
        async with aio_channel(target, monitor) as channel:
            assert await _refused(channel) == grpc.StatusCode.PERMISSION_DENIED
        no_certificate = grpc.ssl_channel_credentials(root_certificates=security.admin().ca)
        async with grpc.aio.secure_channel(target, no_certificate) as channel:
            # Refused by the TLS handshake: no RPC runs.
            assert await _refused(channel) == grpc.StatusCode.UNAVAILABLE
