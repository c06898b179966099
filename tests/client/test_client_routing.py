"""tally.client's direct routing (issue 16) against a real 2-shard cluster (nodes and a gateway in
this process, TLS, the session's PostgreSQL): single-shard work and lookups by id go to their
node, the rest to the gateway (seen in the gateway's own item counters); a slot moved by `tally
slots move` under routed load loses and doubles nothing, and reads of its records by a client
whose map is older still answer as the gateway does; a node killed (kill -9) under routed calls
leaves every transfer applied once. And the client's slots are the servers'."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core import ids as server_ids
from core import slots as server_slots
from core.slots import SlotMap
from shards.local.embedded_pg import EmbeddedPostgres, free_port
from tally.client import (
    Account,
    AsyncClient,
    CallError,
    Client,
    Credentials,
    Outcome,
    RoutingOptions,
    Transaction,
    capture,
    hold,
    new_id,
    reversal,
    transfer,
    void,
)
from tally.client import routing as client_routing
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.cluster_processes import fetch_each_shard, process_cluster
from tests.support.helpers import InProcessCluster, in_process_cluster
from tests.support.slot_moves import customer_on, run_slots

_numbers = itertools.count(1)
SHARDS = 2


def credentials() -> Credentials:
    return Credentials.from_directory(security.root())


def test_the_client_computes_slots_as_the_servers_do() -> None:
    rng = random.Random(16)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:+=é€"
    keys = [new_id(f"cust-{n}") for n in range(2000)] + [
        "".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(20_000)
    ]
    for key in keys:
        assert client_routing.slot_of_id(key) == server_slots.account_slot(key), key
        assert client_routing.slot_of(key) == server_slots.slot_of(key), key
    assert client_routing.SLOT_COUNT == server_slots.SLOT_COUNT
    released = server_ids.move_out_hold_id("ab12", "cust-1/h")
    assert released.startswith(client_routing.MOVE_OUT_PREFIX)
    assert server_ids.is_move_out_id(client_routing.MOVE_OUT_PREFIX + "ab12/cust-1/dep")


def _table(slot_map: SlotMap) -> client_routing.SlotTable:
    return client_routing.SlotTable(slot_map.version, slot_map.owners, {0: "n0", 1: "n1"})


def test_what_routing_sends_to_a_node_and_what_to_the_gateway() -> None:
    router = client_routing.Router(RoutingOptions())
    router.take(_table(SlotMap.even(SHARDS)))
    a, b = customer_on(0, SHARDS), customer_on(1, SHARDS)
    gateway = client_routing.GATEWAY

    def target(*transactions: pb.Transaction) -> str:
        return router.transactions_target(list(transactions))

    assert target(transfer(f"{a}/t", "@bank", f"{a}/dep", 5, "USD").to_message()) == "n0"
    assert target(transfer(f"{b}/t", f"{b}/sav", f"{b}/dep", 5, "USD").to_message()) == "n1"
    assert target(transfer(f"{a}/t", f"{a}/dep", f"{b}/dep", 5, "USD").to_message()) == gateway
    assert target(transfer(f"{b}/t", "@bank", f"{a}/dep", 5, "USD").to_message()) == gateway
    assert target(reversal(f"{a}/r", f"{a}/t").to_message()) == gateway
    held = hold(f"{a}/h", f"{a}/dep", "@bank", 5, "USD").to_message()
    assert target(capture(f"{a}/c", f"{a}/h").to_message()) == gateway  # not seen applied
    router.note_applied_directly([held])
    assert target(capture(f"{a}/c", f"{a}/h").to_message()) == "n0"
    assert target(void(f"{b}/v", f"{a}/h").to_message()) == gateway  # the void's home: n1
    linked = [transfer(f"{a}/l{n}", "@bank", f"{a}/dep", 1, "USD").to_message() for n in (1, 2)]
    assert target(*linked) == "n0"
    mixed = [linked[0], transfer(f"{a}x/l", "@bank", f"{a}/dep", 1, "USD").to_message()]
    assert target(*mixed) == gateway  # ids of two keys: the gateway refuses it, whatever the map
    assert router.accounts_target([f"{a}/dep", f"{a}/sav"]) == "n0"
    assert router.accounts_target([f"{a}/dep", f"{b}/dep"]) == gateway
    assert router.accounts_target(["@bank"]) == gateway
    moved = _table(SlotMap.even(SHARDS).moved([client_routing.slot_of(a)], 1))
    assert router.take(moved) and not router.take(_table(SlotMap.even(SHARDS)))
    assert router.accounts_target([f"{a}/dep"]) == "n1"
    off = client_routing.Router(RoutingOptions(direct=False))
    assert not off.on and off.accounts_target([f"{a}/dep"]) == gateway


def test_which_transaction_reads_go_to_a_node() -> None:
    """A read of records by id goes to the one node homing every id; mixed homes, the
    cluster's own ids (~...) and ids that name no home go to the gateway."""
    router = client_routing.Router(RoutingOptions())
    assert router.records_target([new_id("cust-1")]) == client_routing.GATEWAY  # no table yet
    router.take(_table(SlotMap.even(SHARDS)))
    a, b = customer_on(0, SHARDS), customer_on(1, SHARDS)
    gateway = client_routing.GATEWAY
    assert router.records_target([new_id(a), f"{a}/x", a]) == "n0"
    assert router.records_target([new_id(b)]) == "n1"
    assert router.records_target([new_id(a), new_id(b)]) == gateway
    assert router.records_target([]) == gateway
    assert router.records_target([new_id(a), f"~piece/{a}/t"]) == gateway
    assert router.records_target([new_id(a), ""]) == gateway
    assert router.records_target([f"{a}/" + "x" * 200]) == gateway
    with pytest.raises(ValueError, match="record_table_age_max_s"):
        RoutingOptions(record_table_age_max_s=-1)


@pytest.fixture
async def cluster(pg: EmbeddedPostgres) -> AsyncIterator[InProcessCluster]:
    prefix = f"rc{os.getpid()}_{next(_numbers)}"
    async with in_process_cluster(
        pg, prefix, SHARDS, {"slot_map_poll_interval_s": 0.2}, slot_map_poll_interval_s=0.2
    ) as c:
        yield c


def gateway_items(cluster: InProcessCluster, method: str) -> int:
    """Items the gateway answered for this method, whatever their code."""
    total = 0.0
    for family in cluster.gateway.cluster.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "tally_gateway_item_results_total":
                if sample.labels.get("method") == method:
                    total += sample.value
    return int(total)


def gateway_calls(cluster: InProcessCluster, method: str) -> int:
    """Calls of this method the gateway served, whatever their status."""
    total = 0.0
    for family in cluster.gateway.cluster.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "tally_gateway_rpc_total":
                if sample.labels.get("method") == method:
                    total += sample.value
    return int(total)


async def test_single_shard_work_goes_to_its_node_and_the_rest_to_the_gateway(
    cluster: InProcessCluster,
) -> None:
    a, b = customer_on(0, SHARDS), customer_on(1, SHARDS)
    async with AsyncClient(cluster.target, credentials()) as tally:
        opened = await tally.create_accounts(
            [Account("@bank", "USD"), Account(f"{a}/dep", "USD"), Account(f"{b}/dep", "USD")]
        )
        assert {r.outcome for r in opened} == {Outcome.APPLIED}
        assert tally.routing == "direct (map version 1)"
        assert gateway_items(cluster, "CreateAccounts") == 1  # the spread @bank only
        posts = [transfer(new_id(a), "@bank", f"{a}/dep", 1, "USD") for _ in range(30)]
        posts += [transfer(new_id(b), "@bank", f"{b}/dep", 1, "USD") for _ in range(30)]
        results = await asyncio.gather(*map(tally.post, posts))
        assert {r.code for r in results} == {"created"}
        assert gateway_items(cluster, "PostTransactions") == 0
        assert tally.stats.direct_items["PostTransactions"] == 60
        crossing = await tally.post(transfer(new_id(a), f"{a}/dep", f"{b}/dep", 7, "USD"))
        assert crossing.code == "created" and gateway_items(cluster, "PostTransactions") == 1
        held = await tally.post(hold(new_id(a), f"{a}/dep", "@bank", 3, "USD"))
        captured = await tally.post(capture(new_id(a), held.id))
        assert (held.code, captured.code) == ("created", "created")
        assert gateway_items(cluster, "PostTransactions") == 1  # the hold and its capture: direct
        refund = await tally.post(reversal(new_id(a), captured.id))
        assert refund.code == "created" and gateway_items(cluster, "PostTransactions") == 2
        state = await tally.get_account(f"{a}/dep")
        assert state is not None and state.balance.credits_posted == 30 + 3
        assert tally.stats.direct_items["GetAccounts"] == 1
        assert tally.stats.fallbacks == 0
        await check_transaction_reads(cluster, tally, posts[0], posts[30], crossing.id, captured.id)
    async with AsyncClient(
        cluster.target, credentials(), routing=RoutingOptions(direct=False)
    ) as off:
        assert (await off.post(transfer(new_id(a), "@bank", f"{a}/dep", 1, "USD"))).applied
        assert off.stats.direct_rpcs == {} and off.routing.startswith("gateway only")
    assert gateway_items(cluster, "PostTransactions") == 3
    blocking = await asyncio.to_thread(Client, cluster.target, credentials())
    try:
        paid = transfer(new_id(b), "@bank", f"{b}/dep", 1, "USD")
        assert (await asyncio.to_thread(blocking.post, paid)).applied
        assert blocking.stats.direct_items["PostTransactions"] == 1
    finally:
        await asyncio.to_thread(blocking.close)


async def check_transaction_reads(
    cluster: InProcessCluster,
    tally: AsyncClient,
    on_a: Transaction,
    on_b: Transaction,
    crossing_id: str,
    captured_id: str,
) -> None:
    """Reads of records homed on one node are answered there (counted direct, none at the
    gateway); a missing id, a cross-shard transaction (its home holds its piece) and mixed
    homes are answered by the gateway, each as the gateway answers it."""
    asked_before = gateway_calls(cluster, "GetTransactions")
    found = await tally.get_transaction(on_a.id)
    assert found is not None and found.transaction == on_a and found.status == "posted"
    at_b = (await tally.get_transactions([on_b.id]))[on_b.id]
    assert at_b is not None and at_b.transaction == on_b
    captured = await tally.get_transaction(captured_id)
    assert captured is not None and captured.reversed_by_id  # the refund went via the gateway
    assert tally.stats.direct_items["GetTransactions"] == 3 and tally.stats.fallbacks == 0
    assert gateway_calls(cluster, "GetTransactions") == asked_before
    missing = new_id(customer_on(0, SHARDS))
    assert await tally.get_transaction(missing) is None
    assert tally.stats.fallbacks == 1  # "not found" at the node: asked of the gateway too
    crossing = await tally.get_transaction(crossing_id)
    assert crossing is not None and tally.stats.fallbacks == 2  # a piece at its home
    assert {leg.account_id for leg in crossing.applied_legs} == {
        leg.account_id for leg in crossing.transaction.legs
    }
    both = await tally.get_transactions([on_a.id, on_b.id, missing])
    assert both[on_a.id] == found and both[missing] is None
    assert tally.stats.direct_items["GetTransactions"] == 5  # the mixed read: not routed
    with pytest.raises(CallError):
        await tally.get_transaction(f"~piece/{on_a.id}")
    assert tally.stats.direct_items["GetTransactions"] == 5
    assert gateway_calls(cluster, "GetTransactions") == asked_before + 4  # one call each


async def test_a_node_the_client_cannot_reach_sends_its_work_to_the_gateway(
    pg: EmbeddedPostgres,
) -> None:
    """The node registered a client endpoint nothing listens on: the first routed post fails
    there (a transport error), goes to the gateway and is applied; the node is then left alone
    for node_down_s, so the next posts go to the gateway without a failed attempt first. So do
    reads of transactions, found or not."""
    prefix = f"rc{os.getpid()}_{next(_numbers)}"
    nowhere = f"127.0.0.1:{free_port()}"
    async with (
        in_process_cluster(pg, prefix, 1, advertise_client=nowhere) as cluster,
        AsyncClient(cluster.target, credentials(), routing=RoutingOptions(node_down_s=30)) as tally,
    ):
        key = customer_on(0, 1)
        assert (await tally.create_account(Account("@x", "USD"))).applied  # the gateway's
        assert (await tally.create_account(Account(f"{key}/dep", "USD"))).applied
        for _ in range(10):
            assert (await tally.post(transfer(new_id(key), "@x", f"{key}/dep", 1, "USD"))).applied
        assert tally.stats.fallbacks == 1 and tally.stats.direct_items["CreateAccounts"] == 1
        assert "PostTransactions" not in tally.stats.direct_items
        assert gateway_items(cluster, "PostTransactions") == 10
        paid = transfer(new_id(key), "@x", f"{key}/dep", 1, "USD")
        assert (await tally.post(paid)).applied
        async with AsyncClient(
            cluster.target, credentials(), routing=RoutingOptions(node_down_s=30)
        ) as reader:
            missing = new_id(key)
            for _ in range(2):
                found = await reader.get_transactions([paid.id, missing])
                read, not_found = found[paid.id], found[missing]
                assert read is not None and read.transaction == paid and not_found is None
            assert reader.stats.direct_items["GetTransactions"] == 2  # the first read only
            assert reader.stats.fallbacks == 1
            assert gateway_calls(cluster, "GetTransactions") == 2


async def _load(tally: AsyncClient, key: str, stop: asyncio.Event) -> list[str]:
    """Transfers of 1 from key/dep to key/sav until stopped, four at a time: the outcomes."""
    outcomes: list[str] = []

    async def one_caller() -> None:
        while not stop.is_set():
            result = await tally.post(transfer(new_id(key), f"{key}/dep", f"{key}/sav", 1, "USD"))
            outcomes.append(result.code if result.applied else f"{result.outcome}:{result.code}")
            assert result.applied, result
            await asyncio.sleep(0.005)

    await asyncio.gather(*(one_caller() for _ in range(4)))
    return outcomes


async def test_a_slot_moved_under_routed_load_loses_and_doubles_nothing(
    cluster: InProcessCluster,
) -> None:
    """`tally slots move` moves the load's slot from shard 0 to shard 1 while the client posts
    to shard 0 directly: the source refuses (wrong_shard) from its move-out, the client sends
    that work to the gateway with the same ids and reloads the map; then posts go to shard 1
    directly. Every transfer applied, each once: the balance is the count. And clients that
    read the slot's records before the move read them after it as the gateway does
    (check_reads_after_the_move)."""
    key = customer_on(0, SHARDS)
    async with (
        AsyncClient(cluster.target, credentials()) as tally,
        readers_of_the_slot(cluster, tally, key) as reads,
    ):
        opened = await tally.create_accounts(
            [Account(f"{key}/dep", "USD"), Account(f"{key}/sav", "USD")]
        )
        assert {r.code for r in opened} == {"created"}
        await reads.before_the_move()
        stop = asyncio.Event()
        load = asyncio.create_task(_load(tally, key, stop))
        await asyncio.sleep(0.3)
        code, _, stderr = await run_slots(
            cluster.control_dsn, "move", "--slots", str(client_routing.slot_of(key)), "--to", "1"
        )
        assert code == 0, stderr
        await asyncio.sleep(0.5)
        direct_before = tally.stats.direct_items["PostTransactions"]
        await asyncio.sleep(0.3)
        stop.set()
        outcomes = await load
        assert set(outcomes) == {"created"}, [o for o in outcomes if o != "created"][:5]
        assert tally.stats.fallbacks > 0 and tally.stats.routing_loads >= 2
        assert tally.routing == "direct (map version 2)"
        assert tally.stats.direct_items["PostTransactions"] > direct_before  # now to shard 1
        sav = await tally.get_account(f"{key}/sav")
        assert sav is not None and sav.balance.credits_posted == len(outcomes)
        await reads.after_the_move()
    # The target node holds the account now: read there, directly.
    async with AsyncClient(
        cluster.nodes[1].target, credentials(), routing=RoutingOptions(direct=False)
    ) as at_target:
        moved = await at_target.get_account(f"{key}/sav")
        assert moved is not None and moved.balance.credits_posted == len(outcomes)


class SlotReads:
    """Records of one slot read, before and after it moves from shard 0 to shard 1, by two
    clients whose maps are from before the move: `stale` keeps its map until a node's answer
    is not whole, `fresh` reloads a map older than 0.2 s before it reads a record."""

    def __init__(self, tally: AsyncClient, stale: AsyncClient, fresh: AsyncClient, key: str):
        self.tally, self.stale, self.fresh, self.key = tally, stale, fresh, key
        self.paid = transfer(new_id(key), f"{key}/a", f"{key}/b", 5, "USD")
        self.held = hold(new_id(key), f"{key}/a", f"{key}/b", 2, "USD")

    async def before_the_move(self) -> None:
        """Accounts, a transfer and an open hold on shard 0; both readers read them there."""
        key = self.key
        opened = await self.tally.create_accounts(
            [Account(f"{key}/a", "USD"), Account(f"{key}/b", "USD")]
        )
        assert {r.code for r in opened} == {"created"}
        assert (await self.tally.post(self.paid)).applied
        assert (await self.tally.post(self.held)).applied
        for reader in (self.stale, self.fresh):
            found = await reader.get_transactions([self.paid.id, self.held.id])
            assert [state and state.status for state in found.values()] == ["posted", "pending"]
            assert reader.stats.direct_items["GetTransactions"] == 2 and not reader.stats.fallbacks
            assert reader.routing == "direct (map version 1)"

    async def after_the_move(self) -> None:
        """The transfer reversed and a new one posted at shard 1: shard 0 still has its copy of
        the transfer (not reversed) and of the hold (released by the move), and not the new
        one. The stale reader's reads there are not whole and the gateway answers them; the fresh
        reader reloads first and reads at shard 1, directly (read at shard 0, the transfer's
        copy would be whole, and not reversed)."""
        key = self.key
        refund = await self.tally.post(reversal(new_id(key), self.paid.id))
        later = transfer(new_id(key), f"{key}/b", f"{key}/a", 1, "USD")
        assert refund.applied and (await self.tally.post(later)).applied
        held_alone = await self.stale.get_transaction(self.held.id)  # released at shard 0
        assert self.stale.stats.fallbacks == 1
        missing = new_id(key)
        found = await self.stale.get_transactions([self.paid.id, self.held.id, later.id, missing])
        assert self.stale.stats.direct_items["GetTransactions"] == 2 + 1 + 4
        assert self.stale.stats.fallbacks == 2  # at either shard: `missing` is not found
        assert held_alone == found[self.held.id]
        # Two reads at once: both wait for the one reload.
        paid, paid_too = await asyncio.gather(
            self.fresh.get_transaction(self.paid.id), self.fresh.get_transaction(self.paid.id)
        )
        assert paid == paid_too and self.fresh.routing == "direct (map version 2)"
        found_fresh = await self.fresh.get_transactions([self.held.id, later.id])
        assert self.fresh.stats.direct_items["GetTransactions"] == 2 + 2 + 2
        assert self.fresh.stats.fallbacks == 0
        assert found[self.paid.id] == paid
        for state in (found, found_fresh):
            held, posted = state[self.held.id], state[later.id]
            assert held is not None and (held.status, held.resolved_by_id) == ("pending", "")
            assert posted is not None and posted.transaction == later
        assert paid is not None and paid.reversed_by_id == refund.id and found[missing] is None


@contextlib.asynccontextmanager
async def readers_of_the_slot(
    cluster: InProcessCluster, tally: AsyncClient, key: str
) -> AsyncIterator[SlotReads]:
    stale = RoutingOptions(record_table_age_max_s=3600.0)
    fresh = RoutingOptions(record_table_age_max_s=0.2)
    async with (
        AsyncClient(cluster.target, credentials(), routing=stale) as stale_reader,
        AsyncClient(cluster.target, credentials(), routing=fresh) as fresh_reader,
    ):
        yield SlotReads(tally, stale_reader, fresh_reader, key)


async def test_a_node_killed_under_routed_calls_applies_each_transfer_once(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Shard 0's node is killed (kill -9) while routed posts to it are in flight, and started
    again: the calls it failed go to the gateway with the same ids (which answers once the
    node is back), and every transfer is applied exactly once."""
    async with process_cluster(pg, tmp_path / "logs", shard_count=SHARDS) as cluster:
        key = customer_on(0, SHARDS)
        async with AsyncClient(cluster.target, credentials()) as tally:
            opened = await tally.create_accounts(
                [Account(f"{key}/dep", "USD"), Account(f"{key}/sav", "USD")]
            )
            assert {r.code for r in opened} == {"created"}
            stop = asyncio.Event()
            load = asyncio.create_task(_load(tally, key, stop))
            await asyncio.sleep(0.5)
            direct_before_kill = tally.stats.direct_items["PostTransactions"]
            await cluster.kill_node(0)
            await cluster.start_node(0)
            await asyncio.sleep(0.5)
            stop.set()
            outcomes = await load
            assert set(outcomes) <= {"created", "replayed"}, outcomes
            assert direct_before_kill > 0 and tally.stats.fallbacks > 0
            sav = await tally.get_account(f"{key}/sav")
        assert sav is not None and sav.balance.credits_posted == len(outcomes)
        rows = await fetch_each_shard(
            cluster, "SELECT count(*) AS n FROM transactions WHERE id LIKE $1", f"{key}/%"
        )
        assert sum(shard[0]["n"] for shard in rows) == len(outcomes)
