"""Online slot moves (issue 14, docs/design.md "Moving slots"): `tally slots move` run as its
own process moves a slot with its accounts and the transaction records homed in it from one
node of a 4-shard in-process cluster to another, while clients post through the gateway."""

from __future__ import annotations

import asyncio
import collections
import os
import re
from collections.abc import AsyncIterator

import grpc
import pytest

from core import ids, journal
from core.model import Kind, Leg, Status, TransactionSpec, TransactionState
from core.moves import rebalance_step
from core.slots import SlotMap, slot_of
from core.store import control as control_store
from shards import control
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc
from tests.support import security
from tests.support.audit_commands import audit_json
from tests.support.cluster import SHARD_COUNT, Cluster
from tests.support.helpers import Client, account, audit_problems, start_node, transfer
from tests.support.slot_moves import (
    customer_on,
    moves_net,
    retrying_load,
    run_slots,
    slot_owners,
)
from tests.support.sql import fetch_one

CREATED, REPLAYED = pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED
SOURCE, TARGET = 0, 2


def _customer_on(shard_id: int, skip: int = 0) -> str:
    return customer_on(shard_id, SHARD_COUNT, skip)


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    async with security.channel(cluster.target) as channel:
        yield Client(channel)


async def _open(client: Client, key: str) -> None:
    codes = await client.create(account("@cash"), account(f"{key}/dep"), account(f"{key}/sav"))
    assert codes[1:] == [CREATED, CREATED]


async def _load(client: Client, key: str, stop: asyncio.Event, tag: str) -> int:
    """Transfers of 1 from key/dep to key/sav until stopped: how many were applied. Every one
    must be applied: a client never sees the move (no wrong_shard, no retry asked of it)."""
    count = 0
    while not stop.is_set():
        result = (
            await client.post(transfer(f"{key}/{tag}-{count}", f"{key}/dep", f"{key}/sav", 1))
        )[0]
        assert result.code == CREATED, (pb.ResultCode.Name(result.code), result.message)
        count += 1
        await asyncio.sleep(0.005)
    return count


async def _read(client: Client, account_id: str, stop: asyncio.Event) -> int:
    """Read a balance until stopped: it never goes back (a source's move-out zero is never
    read as the account's balance). How many reads."""
    seen, count = 0, 0
    while not stop.is_set():
        credits = (await client.balance(account_id)).credits_posted
        assert credits >= seen, (credits, seen)
        seen, count = credits, count + 1
        await asyncio.sleep(0.005)
    return count


async def test_a_slot_moves_with_its_accounts_and_ids_under_load(
    cluster: Cluster, client: Client
) -> None:
    key, other = _customer_on(SOURCE), _customer_on(SOURCE, skip=1)
    slot = slot_of(key)
    assert slot_of(other) != slot
    for customer in (key, other):
        await _open(client, customer)
        funded = transfer(f"{customer}/fund", "@cash", f"{customer}/dep", 10_000)
        assert await client.codes(funded) == [CREATED]
    before = await client.post(transfer(f"{key}/t1", f"{key}/dep", f"{key}/sav", 250))
    assert before[0].code == CREATED
    far = _customer_on(1)  # a cross-shard transfer homed in the slot: its record moves too
    await _open(client, far)
    crossing = transfer(f"{key}/x1", f"{key}/dep", f"{far}/sav", 30)
    crossed = await client.post(crossing)
    assert crossed[0].code == CREATED, crossed[0].message

    stop = asyncio.Event()
    loads = [asyncio.create_task(_load(client, c, stop, "load")) for c in (key, other)]
    reader = asyncio.create_task(_read(client, f"{key}/sav", stop))
    await asyncio.sleep(0.3)
    code, stdout, stderr = await run_slots(
        cluster.control_dsn, "move", "--slots", str(slot), "--to", str(TARGET)
    )
    await asyncio.sleep(0.3)
    stop.set()
    moved_count, other_count = await asyncio.gather(*loads)
    assert await reader > 0
    assert code == 0, stderr
    print(stdout)  # the pause per slot, for the record
    pause = re.search(rf"slot {slot} pause_ms ([0-9.]+)", stdout)
    assert pause is not None, stdout
    # The records pre-copied before the fence, under load; then where the pause went.
    steps = re.search(
        r"steps_ms pre-copy=\d+ move-out=(\d+) copy=(\d+) move-in=(\d+) map=(\d+)", stdout
    )
    assert steps is not None, stdout
    assert sum(map(int, steps.groups())) <= float(pause[1]) + 1000
    assert moved_count > 0 and other_count > 0

    # Balances exact, now at the target.
    dep, sav = await client.balance(f"{key}/dep"), await client.balance(f"{key}/sav")
    assert (dep.debits_posted, dep.credits_posted) == (280 + moved_count, 10_000)
    assert (sav.debits_posted, sav.credits_posted) == (0, 250 + moved_count)
    target = cluster.nodes[TARGET]
    async with security.channel(target.target) as channel:
        at_target = await Client(channel).balance(f"{key}/sav")
    assert at_target.credits_posted == 250 + moved_count

    await _source_refuses(cluster, key)
    await _ids_answered_at_the_target(client, key, far, before[0], crossed[0], moved_count)

    # Each shard's audit, and the cluster's, clean; the move-account pieces net to zero.
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == [], node.dsn
    audit_code, report = await audit_json(*cluster.dsns)
    assert audit_code == 0, report
    assert await moves_net(cluster.dsns) == 0


async def _source_refuses(cluster: Cluster, key: str) -> None:
    """The source refuses the slot's writes and reads (the gateway routes to the target)."""
    async with security.channel(cluster.nodes[SOURCE].target) as channel:
        late = transfer(f"{key}/late", f"{key}/dep", f"{key}/sav", 1)
        refused = (await Client(channel).post(late))[0]
        assert refused.code == pb.RESULT_CODE_WRONG_SHARD, refused.message
        stub = Client(channel).stub
        lookup = await stub.GetAccounts(pb.GetAccountsRequest(ids=[f"{key}/sav"]), timeout=30)
    assert lookup.results[0].code == pb.RESULT_CODE_WRONG_SHARD, lookup.results[0]


async def _ids_answered_at_the_target(
    client: Client,
    key: str,
    far: str,
    before: pb.ItemResult,
    crossed: pb.ItemResult,
    moved_count: int,
) -> None:
    """Pre-move ids are replays at the target, with their original timestamps, applied once;
    a pre-move transaction is reversed there, once."""
    again = await client.post(transfer(f"{key}/t1", f"{key}/dep", f"{key}/sav", 250))
    assert (again[0].code, again[0].timestamp_ns) == (REPLAYED, before.timestamp_ns)
    assert (await client.balance(f"{key}/sav")).credits_posted == 250 + moved_count
    record = await client.transaction(f"{key}/t1")
    assert record.timestamp_ns == before.timestamp_ns
    replayed = await client.post(transfer(f"{key}/x1", f"{key}/dep", f"{far}/sav", 30))
    assert (replayed[0].code, replayed[0].timestamp_ns) == (REPLAYED, crossed.timestamp_ns)
    assert (await client.balance(f"{far}/sav")).credits_posted == 30
    reversals = await client.codes(
        pb.Transaction(id=f"{key}/r1", code=9, reverses_id=f"{key}/t1"),
        pb.Transaction(id=f"{key}/r2", code=9, reverses_id=f"{key}/t1"),
    )
    assert reversals == [CREATED, pb.RESULT_CODE_ALREADY_REVERSED]
    assert (await client.transaction(f"{key}/t1")).reversed_by_id == f"{key}/r1"
    assert (await client.balance(f"{key}/sav")).debits_posted == 250


async def test_moves_that_cannot_be_made_are_refused_clearly_and_move_nothing(
    cluster: Cluster, client: Client
) -> None:
    key = _customer_on(SOURCE, skip=2)
    slot = slot_of(key)
    await _open(client, key)
    assert await client.codes(transfer(f"{key}/fund", "@cash", f"{key}/dep", 500)) == [CREATED]
    # A hold with a leg on an account of another slot would span two shards after the move.
    beside = _customer_on(SOURCE, skip=6)
    assert slot_of(beside) != slot
    await _open(client, beside)
    hold = transfer(f"{key}/h1", f"{key}/dep", f"{beside}/sav", 100, pending=True)
    assert await client.codes(hold) == [CREATED]
    other_shard_slot = slot_of(_customer_on(1))
    refusals = {
        ("--slots", "4096", "--to", "1"): "is not a slot",
        ("--slots", "x", "--to", "1"): "is not a slot",
        ("--slots", f"{slot},{slot}", "--to", "1"): "named twice",
        ("--slots", str(slot), "--to", "9"): "no shard of this cluster",
        ("--slots", str(slot), "--to", str(SOURCE)): "already",
        ("--slots", f"{slot},{other_shard_slot}", "--to", "3"): "move one at a time",
        ("--slots", str(slot), "--to", str(TARGET)): "both in and out of the slots",
    }
    for arguments, expected in refusals.items():
        code, stdout, stderr = await run_slots(
            cluster.control_dsn, "move", *arguments, "--held-wait-s", "0.5"
        )
        assert (code, expected in stderr) == (2, True), (arguments, stdout, stderr)
        assert "Traceback" not in stderr
    # The last was pre-copied before its source refused it: what it staged is dropped.
    for node in cluster.nodes:
        assert (await fetch_one(node.dsn, "SELECT count(*) FROM move_staging"))[0] == 0, node.dsn
    # Nothing moved, nothing refused: the slot still takes writes at its shard.
    void = pb.Transaction(id=f"{key}/v1", code=1, void_pending_id=f"{key}/h1")
    assert await client.codes(void) == [CREATED]
    assert await client.codes(transfer(f"{key}/after", f"{key}/dep", f"{key}/sav", 1)) == [CREATED]
    code, stdout, _ = await run_slots(cluster.control_dsn, "resume")
    assert (code, stdout.strip()) == (0, "tally slots: no unfinished move")
    # Once the hold is voided the same move goes through.
    code, stdout, stderr = await run_slots(
        cluster.control_dsn, "move", "--slots", str(slot), "--to", str(TARGET)
    )
    assert code == 0, stderr
    assert (await client.balance(f"{key}/sav")).credits_posted == 1
    # Back to the shard it left: refused before anything is fenced (the target would refuse
    # what the copy stages, after the source had fenced the slot), and the slot goes on.
    code, stdout, stderr = await run_slots(
        cluster.control_dsn, "move", "--slots", str(slot), "--to", str(SOURCE)
    )
    assert (code, "moving a slot back" in stderr) == (2, True), (stdout, stderr)
    assert await client.codes(transfer(f"{key}/back", f"{key}/dep", f"{key}/sav", 1)) == [CREATED]
    # Such a move planned anyway (by a mover before that check): its pre-copy is refused by the
    # target, and the move is abandoned before its move-out; the slot goes on where it is.
    connection = await control.connect(cluster.control_dsn)
    try:
        slot_map = await control_store.load_slot_map(connection)
        assert slot_map is not None
        await control_store.plan_move(
            connection, "bac0bac0bac0bac0", [slot], TARGET, SOURCE, slot_map.version
        )
    finally:
        await connection.close(timeout=5.0)
    code, stdout, stderr = await run_slots(cluster.control_dsn, "resume")
    assert (code, "abandoned before its move-out" in stderr) == (2, True), (stdout, stderr)
    assert await client.codes(transfer(f"{key}/back2", f"{key}/dep", f"{key}/sav", 1)) == [CREATED]
    code, stdout, _ = await run_slots(cluster.control_dsn, "resume")
    assert (code, stdout.strip()) == (0, "tally slots: no unfinished move")


# The mover killed at each of its failpoints, under bank-style load, is test_slot_move_crash's;
# here one of them, for the replay and the source's refusals after a resumed move.
@pytest.mark.parametrize("failpoint", ["slots.after_move_out"])
async def test_a_mover_killed_at_any_step_is_resumed_with_nothing_lost_or_doubled(
    cluster: Cluster, client: Client, failpoint: str
) -> None:
    key = _customer_on(SOURCE, skip=3)
    slot = slot_of(key)
    await _open(client, key)
    assert await client.codes(transfer(f"{key}/fund", "@cash", f"{key}/dep", 10_000)) == [CREATED]
    before = await client.post(transfer(f"{key}/t1", f"{key}/dep", f"{key}/sav", 40))
    # The slot's writes wait from the move-out until the resumed mover moves the map: a bank
    # client retries with the same ids meanwhile (WRONG_SHARD once the gateway's rounds end).
    stop, seen = asyncio.Event(), dict[str, int]()
    load = asyncio.create_task(retrying_load(client, key, stop, seen))
    await asyncio.sleep(0.2)
    code, _, stderr = await run_slots(
        cluster.control_dsn, "move", "--slots", str(slot), "--to", str(TARGET),
        failpoint=f"{failpoint}=exit",
    )  # fmt: skip
    assert code == -9, stderr  # killed (SIGKILL) at the failpoint
    code, stdout, stderr = await run_slots(cluster.control_dsn, "resume")
    assert code == 0, stderr
    assert "resumed and finished" in stdout, stdout
    await asyncio.sleep(0.2)
    stop.set()
    count = await load
    print("retryable answers seen by the client:", seen)
    sav = await client.balance(f"{key}/sav")
    assert (sav.debits_posted, sav.credits_posted) == (0, 40 + count)
    again = await client.post(transfer(f"{key}/t1", f"{key}/dep", f"{key}/sav", 40))
    assert (again[0].code, again[0].timestamp_ns) == (REPLAYED, before[0].timestamp_ns)
    async with security.channel(cluster.nodes[SOURCE].target) as channel:
        late = transfer(f"{key}/late", f"{key}/dep", f"{key}/sav", 1)
        assert (await Client(channel).post(late))[0].code == pb.RESULT_CODE_WRONG_SHARD
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == [], node.dsn
    assert await moves_net(cluster.dsns) == 0


def _moved_by_rebalance(shard_count: int, slots_per_move: int) -> dict[int, int]:
    """Slot -> its new shard, for a rebalance of the even map onto one more shard."""
    owners = list(SlotMap.even(shard_count).owners)
    moved: dict[int, int] = {}
    while (step := rebalance_step(owners, range(shard_count + 1), slots_per_move)) is not None:
        _, target, slots = step
        for slot in slots:
            owners[slot] = moved[slot] = target
    return moved


async def _cross_load(client: Client, keys: list[str], stop: asyncio.Event) -> list[int]:
    """Cross-shard transfers of 1 round a ring of customers (keys[i]/dep to keys[i+1]/sav, id
    homed at keys[i]) until stopped: how many from each. Every one applied at once."""
    counts = [0] * len(keys)
    while not stop.is_set():
        for n, key in enumerate(keys):
            after = keys[(n + 1) % len(keys)]
            item = transfer(f"{key}/x-{counts[n]}", f"{key}/dep", f"{after}/sav", 1)
            result = (await client.post(item))[0]
            assert result.code == CREATED, (pb.ResultCode.Name(result.code), result.message)
            counts[n] += 1
        await asyncio.sleep(0.01)
    return counts


async def _hold_load(client: Client, keys: list[str], stop: asyncio.Event) -> int:
    """Holds of 1 on each customer (dep to sav), each posted in full at once, until stopped:
    how many rounds. A move waits for the moment none of its slots' holds is open."""
    rounds = 0
    while not stop.is_set():
        for key in keys:
            hold = transfer(f"{key}/h-{rounds}", f"{key}/dep", f"{key}/sav", 1, pending=True)
            post = pb.Transaction(id=f"{key}/hp-{rounds}", code=1, post_pending_id=hold.id)
            for item in (hold, post):
                result = (await client.post(item))[0]
                assert result.code == CREATED, (pb.ResultCode.Name(result.code), result.message)
        rounds += 1
        await asyncio.sleep(0.01)
    return rounds


async def test_a_shard_added_under_load_gets_its_even_share_by_rebalance(
    pg: EmbeddedPostgres, cluster: Cluster, client: Client
) -> None:
    moved = _moved_by_rebalance(SHARD_COUNT, 256)
    even = SlotMap.even(SHARD_COUNT)
    # One customer from each shard whose slot the rebalance moves to the new shard.
    keys = [
        next(k for n in range(100_000) if (k := f"rb-{n}") and slot_of(k) in moved
             and even.shard_of_key(k) == shard)
        for shard in range(SHARD_COUNT)
    ]  # fmt: skip
    for key in keys:
        await _open(client, key)
        assert await client.codes(transfer(f"{key}/fund", "@cash", f"{key}/dep", 10**6)) == [
            CREATED
        ]
    stuck_slot, spanning, crossing_hold = await _open_holds_across(client, moved, keys)
    name = f"c{os.getpid()}_added_{slot_of(keys[0])}"
    await pg.create_database_async(name)
    added = await start_node(
        pg.dsn(name), control_dsn=cluster.control_dsn, shard_id=SHARD_COUNT,
        slot_map_poll_interval_s=0.2,
    )  # fmt: skip
    try:
        stop = asyncio.Event()
        loads = [asyncio.create_task(_load(client, key, stop, "load")) for key in keys]
        crossing = asyncio.create_task(_cross_load(client, keys, stop))
        holding = asyncio.create_task(_hold_load(client, keys, stop))
        await asyncio.sleep(0.3)
        code, stdout, stderr = await run_slots(cluster.control_dsn, "rebalance")
        await asyncio.sleep(0.3)
        stop.set()
        local = await asyncio.gather(*loads)
        cross = await crossing
        held = await holding
        local = [count + held for count in local]  # each hold posted: one more transfer of 1
        assert code == 0, stderr
        # Pre-copied under load, each copy after the fence staging what changed exactly.
        assert stdout.count("pre-copy=") == 4 and "copy-again" not in stdout, (stdout, stderr)
        pauses = [float(p) for p in re.findall(r"pause_ms ([0-9.]+)", stdout)]
        print(stdout.count("done:"), "moves; pause per slot, ms: max", max(pauses))
        assert len(pauses) == len(moved)
        # The spanning hold's slot kept where it is (another moved in its stead), said; the
        # cross-shard hold moved with its slot, and is posted at its new shard.
        assert f"slot {stuck_slot} kept where it is: open hold" in stdout, stdout
        owners = await slot_owners(cluster.control_dsn)
        payer2 = crossing_hold.legs[0].account_id.removesuffix("/dep")
        assert owners[stuck_slot] == 0 and owners[slot_of(payer2)] == SHARD_COUNT
        void = pb.Transaction(id=f"{spanning.id}-void", code=1, void_pending_id=spanning.id)
        post = pb.Transaction(
            id=f"{crossing_hold.id}-post", code=1, post_pending_id=crossing_hold.id
        )
        assert await client.codes(void, post) == [CREATED, CREATED]
        payee = crossing_hold.legs[1].account_id
        assert (await client.balance(payee)).credits_posted == 400
        await _check_rebalanced(cluster, added.dsn, client, keys, local, cross)
    finally:
        await added.stop()


async def _open_holds_across(
    client: Client, moved: dict[int, int], keys: list[str]
) -> tuple[int, pb.Transaction, pb.Transaction]:
    """Two open holds of a customer of shard 0 in a slot the rebalance would move: one on its
    shard spanning that slot and another it keeps (it cannot move), and a cross-shard one to a
    customer of shard 1 in a slot it keeps (its record moves with its slot, its piece stays):
    (the first's slot, the first, the second)."""
    even = SlotMap.even(SHARD_COUNT)
    taken = {slot_of(key) for key in keys}
    payer, payer2 = [
        k for n in range(100_000) if (k := f"rbs-{n}") and slot_of(k) in moved
        and even.shard_of_key(k) == 0 and slot_of(k) not in taken
    ][:2]  # fmt: skip
    assert slot_of(payer) != slot_of(payer2)
    payee = next(
        k for n in range(100_000) if (k := f"rbp-{n}") and slot_of(k) not in moved
        and even.shard_of_key(k) == 1
    )  # fmt: skip
    kept = next(
        k for n in range(100_000) if (k := f"rbk-{n}") and slot_of(k) not in moved
        and even.shard_of_key(k) == 0
    )  # fmt: skip
    for key in (payer, payer2, payee, kept):
        await _open(client, key)
    funds = [transfer(f"{k}/fund", "@cash", f"{k}/dep", 1_000) for k in (payer, payer2)]
    spanning = transfer(f"{payer}/sh", f"{payer}/dep", f"{kept}/sav", 100, pending=True)
    crossing = transfer(f"{payer2}/xh", f"{payer2}/dep", f"{payee}/sav", 400, pending=True)
    assert await client.codes(*funds, spanning, crossing) == [CREATED] * 4
    return slot_of(payer), spanning, crossing


async def _check_rebalanced(
    cluster: Cluster,
    added_dsn: str,
    client: Client,
    keys: list[str],
    local: list[int],
    cross: list[int],
) -> None:
    """The map spread evenly, every balance exact at its new shard, every audit clean."""
    owners = await slot_owners(cluster.control_dsn)
    assert sorted(collections.Counter(owners).values()) == [819, 819, 819, 819, 820]
    for n, key in enumerate(keys):
        dep, sav = await client.balance(f"{key}/dep"), await client.balance(f"{key}/sav")
        assert (dep.debits_posted, dep.credits_posted) == (local[n] + cross[n], 10**6)
        assert (sav.debits_posted, sav.credits_posted) == (0, local[n] + cross[n - 1])
        assert owners[slot_of(key)] == SHARD_COUNT
    dsns = [*cluster.dsns, added_dsn]
    for dsn in dsns:
        assert await audit_problems(dsn) == [], dsn
    audit_code, report = await audit_json(*dsns)
    assert audit_code == 0, report
    assert await moves_net(dsns) == 0


def _bad_move_ins(slot: int, targets_own: int) -> list[tuple[spb.MoveSlotsInRequest, str]]:
    """MoveSlotsIn requests each wrong in one way, and what the refusal names."""
    key = _customer_on(SOURCE, skip=5)
    line = spb.MovedAccount(line="A|x/y|USD|1|0|{}|5")
    open_hold = _record_line(f"{key}/h", Kind.ORDINARY)  # a posted transfer never moves open
    return [
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=9), "source_shard"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, accounts=[
            spb.MovedAccount(line="garbage")]), "accounts[0].line"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, accounts=[
            spb.MovedAccount(line="A|@cash|USD|1|0|{}|5")]), "spread"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, accounts=[
            spb.MovedAccount(line=line.line, debits_posted=-1)]), "negative"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, records=[
            spb.MovedRecord(line="T|x")]), "records[0].line"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, spread_accounts=[
            line]), "spread_accounts[0]"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, records=[
            spb.MovedRecord(line=open_hold, status=2)]), "only a single-shard hold"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, records=[
            spb.MovedRecord(line=open_hold, status=1, expires_at_ns=-1)]), "expires_at_ns"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, records=[
            spb.MovedRecord(line=open_hold, status=9)]), "records[0].status"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[targets_own], source_shard=0), "already"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, staged=True,
            accounts=[line]), "staged"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, staged=True,
            totals=spb.MoveTotals(accounts_digest="x")), "totals.accounts_digest"),
        (spb.MoveSlotsInRequest(move_id="ab", slots=[slot], source_shard=0, staged=True,
            totals=spb.MoveTotals(accounts_digest="0" * 64, records_digest="0" * 64,
            records_states_digest="x")), "totals.records_states_digest"),
    ]  # fmt: skip


def _bad_pages(slot: int, targets_own: int) -> tuple[list[object], list[object]]:
    """ReadMovedOut requests (at the source) and StageMoveIn requests (at the target) each
    wrong in one way, and what the refusal names."""
    accounts, records = spb.MOVED_PART_ACCOUNTS, spb.MOVED_PART_RECORDS
    precopy, changed = spb.MOVED_PART_PRECOPY_RECORDS, spb.MOVED_PART_CHANGED_RECORDS
    held, stuck = spb.MOVED_PART_HELD_PIECES, spb.MOVED_PART_STUCK_SLOTS
    elsewhere = _record_line(f"{_customer_on(1, skip=5)}/t", Kind.ORDINARY)
    piece_elsewhere = _piece_line(f"{_customer_on(1, skip=5)}/x")
    line = spb.MovedAccount(line="A|x/y|USD|1|0|{}|5")
    reads = [
        (spb.ReadMovedOutRequest(move_id="XYZ", slots=[slot], part=accounts,
            item_count_max=5), "move_id"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[4096], part=accounts,
            item_count_max=5), "not in"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], item_count_max=5), "part"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=records), "item_count_max"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=records,
            item_count_max=2001), "item_count_max"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=records, item_count_max=5,
            after_id="x" * 200), "after_id"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=records,
            item_count_max=5), "no move-out"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=changed,
            item_count_max=5), "no move-out"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=changed, item_count_max=5,
            since_sequence=-1), "since_sequence"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[targets_own], part=precopy,
            item_count_max=5), "not this shard's to pre-copy"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=spb.MOVED_PART_PIECES,
            item_count_max=5), "no move-out"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=held, item_count_max=5,
            piece_ids=["x/y"]), "not a cross-shard piece's id"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=held, item_count_max=5,
            piece_ids=[ids.piece_id("x/y", "ab")] * 2001), "at most 2000 piece_ids"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=records, item_count_max=5,
            piece_ids=[ids.piece_id("x/y", "ab")]), "piece_ids are for"),
        (spb.ReadMovedOutRequest(move_id="ab", slots=[slot], part=stuck, item_count_max=5,
            target_shard=5000), "target_shard"),
    ]  # fmt: skip
    stages = [
        (spb.StageMoveInRequest(move_id="", slots=[slot], source_shard=0), "move_id"),
        (spb.StageMoveInRequest(move_id="ab", slots=[slot], source_shard=9), "source_shard"),
        (spb.StageMoveInRequest(move_id="ab", slots=[targets_own], source_shard=0), "already"),
        (spb.StageMoveInRequest(move_id="ab", slots=[slot], source_shard=0, accounts=[
            spb.MovedAccount(line="garbage")]), "accounts[0].line"),
        (spb.StageMoveInRequest(move_id="ab", slots=[slot], source_shard=0, accounts=[
            line] if slot_of("x") != slot else []), "not of the slots"),
        (spb.StageMoveInRequest(move_id="ab", slots=[slot], source_shard=0, records=[
            spb.MovedRecord(line=elsewhere, status=1)]), "not homed"),
        (spb.StageMoveInRequest(move_id="ab", slots=[slot], source_shard=0, records=[
            spb.MovedRecord(line="T|x")] * 2001), "at most"),
        (spb.StageMoveInRequest(move_id="ab", slots=[slot], source_shard=0, records=[
            spb.MovedRecord(line=piece_elsewhere, status=2)]), "nor held pieces"),
        (spb.StageMoveInRequest(move_id="ab", slots=[slot], source_shard=0, records=[
            spb.MovedRecord(line=piece_elsewhere, status=1)]), "moves only held"),
    ]  # fmt: skip
    return list(reads), list(stages)


def _piece_line(account_key: str) -> str:
    """A held cross-shard piece's line (coordinator shard 3), its legs on account_key's."""
    legs = (Leg(f"{account_key}/a", True, 5, "USD"), Leg("@clearing/USD", False, 5, "USD"))
    spec = TransactionSpec(ids.piece_id("z/h", "ab"), Kind.PREPARED, legs, 1, (), "", 30, "3")
    state = TransactionState(spec, legs, 10, Status.PENDING)
    return journal.transaction_line(state, *journal.legs_texts(state))


def _record_line(transaction_id: str, kind: Kind) -> str:
    legs = (Leg(f"{transaction_id}/a", True, 5, "USD"), Leg(f"{transaction_id}/b", False, 5, "USD"))
    spec = TransactionSpec(transaction_id, kind, legs, 1, (), "", 0, "")
    state = TransactionState(spec, legs, 10, Status.PENDING)
    return journal.transaction_line(state, *journal.legs_texts(state))


async def test_the_move_rpcs_refuse_bad_input_with_a_status_naming_it(cluster: Cluster) -> None:
    source, target = cluster.nodes[SOURCE], cluster.nodes[TARGET]
    slot = slot_of(_customer_on(SOURCE, skip=5))
    foreign = slot_of(_customer_on(1, skip=5))
    targets_own = slot_of(_customer_on(TARGET, skip=5))
    outs = [
        (spb.MoveSlotsOutRequest(move_id="", slots=[slot], target_shard=2), "move_id"),
        (spb.MoveSlotsOutRequest(move_id="XYZ", slots=[slot], target_shard=2), "move_id"),
        (spb.MoveSlotsOutRequest(move_id="ab", slots=[], target_shard=2), "no slots"),
        (spb.MoveSlotsOutRequest(move_id="ab", slots=[4096], target_shard=2), "not in"),
        (spb.MoveSlotsOutRequest(move_id="ab", slots=[slot], target_shard=9), "target_shard"),
        (spb.MoveSlotsOutRequest(move_id="ab", slots=[slot], target_shard=SOURCE), "target_shard"),
        (spb.MoveSlotsOutRequest(move_id="ab", slots=[foreign], target_shard=2), "not this shard"),
        (spb.MoveSlotsOutRequest(move_id="ab", slots=[slot], target_shard=2, pieces_checked=True,
            checked_piece_ids=["x"] * 2001), "checked_piece_ids"),
    ]  # fmt: skip
    ins = _bad_move_ins(slot, targets_own)
    reads, stages = _bad_pages(slot, targets_own)
    for node, requests in ((source, [*outs, *reads]), (target, [*ins, *stages])):
        async with security.cluster_channel(node.internal_target) as channel:
            stub = spb_grpc.ShardStub(channel)
            for request, expected in requests:
                call = getattr(stub, type(request).__name__.removesuffix("Request"))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(request, timeout=30)
                code = refused.value.code()
                assert code in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ), (request, code)
                assert expected in (refused.value.details() or ""), (
                    request,
                    refused.value.details(),
                )
    # The client listener does not serve them; an admin identity is not a cluster one.
    async with security.channel(source.target) as channel:
        stub = spb_grpc.ShardStub(channel)
        for call, request in (
            (stub.MoveSlotsOut, spb.MoveSlotsOutRequest(move_id="ab", slots=[slot])),
            (stub.ReadMovedOut, spb.ReadMovedOutRequest(move_id="ab", slots=[slot])),
            (stub.StageMoveIn, spb.StageMoveInRequest(move_id="ab", slots=[slot])),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    async with security.channel(source.internal_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await spb_grpc.ShardStub(channel).MoveSlotsOut(
                spb.MoveSlotsOutRequest(move_id="ab", slots=[slot], target_shard=2), timeout=30
            )
        assert refused.value.code() in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAVAILABLE,
        )
