"""Online slot moves (issue 14, docs/design.md "Moving slots"): `tally slots move` run as its
own process moves a slot with its accounts and the transaction records homed in it from one
node of a 4-shard in-process cluster to another, while clients post through the gateway."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from core.slots import slot_of
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.audit_commands import audit_json
from tests.support.cluster import SHARD_COUNT, Cluster
from tests.support.helpers import Client, account, audit_problems, transfer
from tests.support.slot_moves import customer_on, moves_net, run_slots

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
    hold = transfer(f"{key}/h1", f"{key}/dep", "@cash", 100, pending=True)
    assert await client.codes(hold) == [CREATED]
    other_shard_slot = slot_of(_customer_on(1))
    refusals = {
        ("--slots", "4096", "--to", "1"): "is not a slot",
        ("--slots", "x", "--to", "1"): "is not a slot",
        ("--slots", f"{slot},{slot}", "--to", "1"): "named twice",
        ("--slots", str(slot), "--to", "9"): "no shard of the slot map",
        ("--slots", str(slot), "--to", str(SOURCE)): "already",
        ("--slots", f"{slot},{other_shard_slot}", "--to", "3"): "move one at a time",
        ("--slots", str(slot), "--to", str(TARGET)): "amounts held",
    }
    for arguments, expected in refusals.items():
        code, stdout, stderr = await run_slots(cluster.control_dsn, "move", *arguments)
        assert (code, expected in stderr) == (2, True), (arguments, stdout, stderr)
        assert "Traceback" not in stderr
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


@pytest.mark.parametrize(
    "failpoint",
    ["slots.before_move_out", "slots.after_move_out", "slots.after_move_in", "slots.before_map"],
)
async def test_a_mover_killed_at_any_step_is_resumed_with_nothing_lost_or_doubled(
    cluster: Cluster, client: Client, failpoint: str
) -> None:
    key = _customer_on(SOURCE, skip=3)
    slot = slot_of(key)
    await _open(client, key)
    assert await client.codes(transfer(f"{key}/fund", "@cash", f"{key}/dep", 10_000)) == [CREATED]
    before = await client.post(transfer(f"{key}/t1", f"{key}/dep", f"{key}/sav", 40))
    stop = asyncio.Event()
    load = asyncio.create_task(_load(client, key, stop, "load"))
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
