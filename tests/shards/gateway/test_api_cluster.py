"""The single-shard semantic tests, unchanged, through the gateway of a 4-shard cluster.

Every scenario of tests/support/ledger_api.py that tests/shards/node/test_api.py runs against
a single node runs here too, under the same test name; only the fixtures differ:
`channel` reaches the gateway of a 4-shard cluster whose slot map puts each customer of those
tests on a shard of its own (cust-1, cust-2, cust-3 and eu on shards 0, 1, 2 and 3), so
transfers between customers cross shards (the linked group of cust-1 -> cust-2 transfers, the
two-currency fx1, ...), and spread accounts (@funding/..., @income/...) have a piece on every
shard. `node` and `dsn` are cust-1's shard (the restart test stops that node and restarts it
alone on its database); a test asking for `dsn` alone gets a fresh database, as in test_api.

After each test the clearing pieces net to zero and nothing stays held anywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from core.slots import account_slot
from core.store import control as control_store
from shards import control
from shards.local.embedded_pg import EmbeddedPostgres
from tests.support import ledger_api, security
from tests.support.cluster import Cluster
from tests.support.helpers import Client, NodeHandle
from tests.support.processes import fetch_rows

PLACEMENT = {"cust-1": 0, "cust-2": 1, "cust-3": 2, "eu": 3}


@pytest.fixture
async def placed(cluster: Cluster) -> AsyncIterator[Cluster]:
    """The cluster, with each customer's slot moved to its shard before any account exists."""
    connection = await control.connect(cluster.control_dsn)
    try:
        for key, shard_id in PLACEMENT.items():
            await control_store.move_slots(connection, [account_slot(f"{key}/x")], shard_id)
    finally:
        await connection.close()
    for handle in cluster.nodes:
        await handle.node.refresh_slot_map_now()
    await cluster.gateway.cluster.refresh()
    yield cluster
    await _check_cluster_books(cluster)


async def _check_cluster_books(running: Cluster) -> None:
    """Every clearing account nets to zero over the shards, and no hold is left."""
    net: dict[str, int] = {}
    for handle in running.nodes:
        rows = await fetch_rows(
            handle.dsn,
            "SELECT id, debits_posted - credits_posted AS net, debits_pending + credits_pending"
            " AS pending FROM accounts WHERE id LIKE '@clearing/%'",
        )
        for row in rows:
            net[row["id"]] = net.get(row["id"], 0) + int(row["net"])
            assert row["pending"] == 0, (handle.dsn, row["id"])
    assert all(value == 0 for value in net.values()), net


@pytest.fixture
async def channel(placed: Cluster) -> AsyncIterator[grpc.aio.Channel]:
    async with security.channel(placed.target) as channel:
        yield channel


@pytest.fixture
async def node(placed: Cluster) -> NodeHandle:
    return placed.nodes[PLACEMENT["cust-1"]]


@pytest.fixture
async def dsn(request: pytest.FixtureRequest, pg: EmbeddedPostgres) -> str:
    if "node" in request.fixturenames:
        handle: NodeHandle = request.getfixturevalue("node")
        return handle.dsn
    name = f"api_cluster_{request.node.name[:40]}".lower().replace("[", "_").replace("]", "")
    await pg.create_database_async(name)
    return pg.dsn(name)


@pytest.fixture
async def client(channel: grpc.aio.Channel) -> Client:
    return await ledger_api.client_with_accounts(channel)


def test_the_placement_spreads_the_customers_over_every_shard() -> None:
    assert sorted(PLACEMENT.values()) == [0, 1, 2, 3]


async def test_accounts_replay_and_conflict(client: Client) -> None:
    await ledger_api.accounts_replay_and_conflict(client)


async def test_transaction_replay_returns_original_and_conflict_names_field(client: Client) -> None:
    await ledger_api.transaction_replay_returns_original_and_conflict_names_field(client)


async def test_replay_after_restart(client: Client, node: NodeHandle, dsn: str) -> None:
    await ledger_api.replay_after_restart(client, node, dsn)


async def test_limits_insufficient_funds_and_credits_exceed_debits(client: Client) -> None:
    await ledger_api.limits_insufficient_funds_and_credits_exceed_debits(client)


async def test_stateful_rejections(client: Client) -> None:
    await ledger_api.stateful_rejections(client)


async def test_unbalanced_and_multi_currency(client: Client) -> None:
    await ledger_api.unbalanced_and_multi_currency(client)


async def test_linked_group_is_all_or_nothing(client: Client) -> None:
    await ledger_api.linked_group_is_all_or_nothing(client)


async def test_hold_posted_in_part(client: Client) -> None:
    await ledger_api.hold_posted_in_part(client)


async def test_hold_posted_in_full_and_voided(client: Client) -> None:
    await ledger_api.hold_posted_in_full_and_voided(client)


async def test_hold_expires_without_a_client_asking(dsn: str) -> None:
    await ledger_api.hold_expires_without_a_client_asking(dsn)


async def test_reversal(client: Client) -> None:
    await ledger_api.reversal(client)


async def test_reversal_limited_by_funds(client: Client) -> None:
    await ledger_api.reversal_limited_by_funds(client)


async def test_close_account(client: Client) -> None:
    await ledger_api.close_account(client)


async def test_history_pagination_and_balance_at(client: Client) -> None:
    await ledger_api.history_pagination_and_balance_at(client)


async def test_get_accounts_reports_each_id(client: Client) -> None:
    await ledger_api.get_accounts_reports_each_id(client)


async def test_books_balance_after_everything(client: Client, node: NodeHandle) -> None:
    await ledger_api.books_balance_after_everything(client, node)


def test_every_scenario_runs_through_the_gateway() -> None:
    assert ledger_api.scenarios_not_run(globals()) == []
