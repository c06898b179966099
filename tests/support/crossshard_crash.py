"""Set-ups and checks shared by the kill -9 suites of cross-shard transactions and holds
(tests/shards/crossshard/test_cluster_crash.py, test_holds_crash.py): the shortened deadline
the processes run with, funded customers on chosen shards, fresh channels to restarted
processes, and the checks every scenario ends with."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from core.ids import clearing_account, parse_piece_id
from tally.v1 import ledger_pb2 as pb
from tally.v1.shard_pb2 import CreateClearingAccountsRequest
from tally.v1.shard_pb2_grpc import ShardStub
from tests.support import security
from tests.support.cluster_processes import ProcessCluster
from tests.support.helpers import Client, account, transfer
from tests.support.processes import fetch_rows

# The participants' prepare deadline the gateway runs with (TALLY_PREPARE_DEADLINE_S): short,
# so that a scenario waiting for an overdue piece to settle takes seconds.
DEADLINE_S = 2
FUNDING = 1_000  # on each customer's deposit, by open_accounts
AMOUNT = 300  # of Pair.transfer
CLEARING = clearing_account("USD")
# Once a piece is overdue, its participant settles it at its next sweep (every 0.5 s).
SETTLE_SLACK_S = 2.0
CLIENT_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def gateway_environment(failpoints: str = "") -> dict[str, str]:
    return {"TALLY_PREPARE_DEADLINE_S": str(DEADLINE_S), "TALLY_FAILPOINTS": failpoints}


@contextlib.asynccontextmanager
async def connected_to(target: str) -> AsyncIterator[Client]:
    """A fresh channel, as the admin identity (a restarted process on the same port is
    reached at once)."""
    async with security.channel(target, CLIENT_CHANNEL_OPTIONS) as channel:
        yield Client(channel)


@dataclass(frozen=True)
class Pair:
    """Two funded customers on different shards; a transfer from the first to the second, named
    under the first's partition key (id()), has the first's shard as coordinator (its home)
    and the second's as participant."""

    payer: str
    payee: str
    coordinator: int
    participant: int

    def id(self, name: str) -> str:
        """A transaction id under the payer's partition key: its home is the payer's shard,
        which coordinates the pair's cross-shard transactions."""
        return f"{self.payer.split('/')[0]}/{name}"

    def transfer(self, name: str, amount: int = AMOUNT) -> pb.Transaction:
        return transfer(self.id(name), self.payer, self.payee, amount)


def customer_on(cluster: ProcessCluster, shard_id: int, taken: set[str]) -> str:
    for number in range(100_000):
        key = f"cust-{number}"
        if key not in taken and cluster.slot_map.shard_of_key(key) == shard_id:
            taken.add(key)
            return f"{key}/dep"
    raise AssertionError(f"no customer key for shard {shard_id}")


async def open_accounts(
    cluster: ProcessCluster, client: Client, shards: list[int], clearing: bool = False
) -> list[str]:
    """@cash, and a deposit account funded with FUNDING on each of these shards."""
    taken: set[str] = set()
    deposits = [customer_on(cluster, shard_id, taken) for shard_id in shards]
    accounts = [account("@cash"), *(account(d, no_overdraft=True) for d in deposits)]
    assert set(await client.create(*accounts)) == {pb.RESULT_CODE_CREATED}
    if clearing:  # the gateway creates it with its first cross-shard transaction otherwise
        for shard_id in range(len(cluster.shard_dsns)):  # clients may not: ask each node
            target = cluster.node_internal_target(shard_id)  # tally.v1.Shard: cluster only
            async with security.cluster_channel(target) as channel:
                response = await ShardStub(channel).CreateClearingAccounts(
                    CreateClearingAccountsRequest(currencies=["USD"]), timeout=30
                )
                assert [r.code for r in response.results] == [pb.RESULT_CODE_CREATED]
    # Under each deposit's partition key: recorded at its shard, a single-shard transfer
    # (@cash is spread over every shard).
    funding = [transfer(f"{d.split('/')[0]}/fund", "@cash", d, FUNDING) for d in deposits]
    assert await client.codes(*funding) == [pb.RESULT_CODE_CREATED] * len(deposits)
    return deposits


async def funded_pair(cluster: ProcessCluster, client: Client, coordinator: int = 0) -> Pair:
    participant = (coordinator + 1) % len(cluster.shard_dsns)
    payer, payee = await open_accounts(cluster, client, [coordinator, participant])
    return Pair(payer, payee, coordinator, participant)


def held_transactions(held: set[str]) -> set[str]:
    """Client transaction ids of held pieces ("~piece/<attempt>/<id>")."""
    return {parse_piece_id(h)[0] if h.startswith("~piece/") else h for h in held}


async def held_on(cluster: ProcessCluster, shard_id: int) -> set[str]:
    rows = await fetch_rows(cluster.shard_dsns[shard_id], "SELECT transaction_id FROM holds")
    return held_transactions({row["transaction_id"] for row in rows})


async def check_clearing_nets_to_zero(client: Client) -> None:
    clearing = await client.balance(CLEARING)
    assert clearing.debits_posted == clearing.credits_posted
    assert clearing.debits_pending == clearing.credits_pending == 0


async def retry_twice(client: Client, message: pb.Transaction) -> pb.ItemResult:
    """The same id and content, twice (through whichever gateway `client` reaches): once
    applied, the second answer is its replay (same timestamp); a refusal is answered alike."""
    (first,) = await client.post(message)
    (second,) = await client.post(message)
    if first.code in (pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED):
        assert second.code == pb.RESULT_CODE_REPLAYED
        assert second.timestamp_ns == first.timestamp_ns
    else:
        assert (second.code, second.message) == (first.code, first.message)
    return first
