"""The ledger's semantics through the real gRPC API of a single node: every result code,
replays, holds, links (the scenarios of tests/support/ledger_api.py, which
tests/shards/gateway/test_api_cluster.py runs through a 4-shard gateway too)."""

from __future__ import annotations

import grpc
import pytest

from tests.support import ledger_api
from tests.support.helpers import Client, NodeHandle


@pytest.fixture
async def client(channel: grpc.aio.Channel) -> Client:
    return await ledger_api.client_with_accounts(channel)


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


def test_every_scenario_runs_against_a_node() -> None:
    assert ledger_api.scenarios_not_run(globals()) == []
