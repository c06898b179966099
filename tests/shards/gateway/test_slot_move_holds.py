"""Open holds move with their slot (issue 14, docs/design.md "Moving slots"): a slot with open
single-shard holds on its accounts (one on a spread account, one with an expiry) moves from one
node of a 4-shard in-process cluster to another under load, the mover killed after the
move-out and resumed; afterwards each hold is posted in part, voided, posted in full or
expires at the target, once, and what cannot move (a hold spanning slots, a cross-shard hold)
is refused with its reason. One cluster, one test: the steps build on one another."""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
import pytest

from core import ids, journal
from core.invariant import check
from core.model import Kind, Leg, Status, TransactionSpec, TransactionState
from core.slots import slot_of, transaction_slot
from core.store import control as control_store
from core.store import moves as store_moves
from core.store import schema
from core.store import shard as shard_store
from shards import control
from shards.local.embedded_pg import EmbeddedPostgres
from shards.node.writer import WriterConfig
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tests.support import security
from tests.support.audit_commands import audit_json
from tests.support.cluster import SHARD_COUNT, Cluster
from tests.support.helpers import (
    CREDIT,
    DEBIT,
    Client,
    InProcessCluster,
    account,
    audit_problems,
    in_process_cluster,
    leg,
    start_node,
    transfer,
)
from tests.support.slot_moves import (
    customer_on,
    moves_net,
    post_until_done,
    retrying_load,
    run_slots,
)

CREATED, REPLAYED = pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED
SOURCE, TARGET, FAR = 0, 2, 1
EXPIRY_S = 15  # past the move even on a loaded machine (a mover's start can take seconds)


def _hold(hold_id: str, debit: str, credit: str, amount: int, timeout_s: int = 0) -> pb.Transaction:
    return transfer(hold_id, debit, credit, amount, pending=True, timeout_seconds=timeout_s)


def _post(post_id: str, hold_id: str, *legs: pb.Leg) -> pb.Transaction:
    return pb.Transaction(id=post_id, code=1, post_pending_id=hold_id, legs=legs)


def _void(void_id: str, hold_id: str) -> pb.Transaction:
    return pb.Transaction(id=void_id, code=1, void_pending_id=hold_id)


async def _created(client: Client, *items: pb.Transaction) -> list[pb.ItemResult]:
    results = await client.post(*items)
    for item, result in zip(items, results, strict=True):
        assert result.code == CREATED, (item.id, pb.ResultCode.Name(result.code), result.message)
    return results


async def _records_at(dsn: str, transaction_ids: list[str]) -> set[str]:
    """Those of these ids recorded on a shard (in its journal or moved in)."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT id FROM transactions WHERE id = ANY($1::text[]) UNION "
            "SELECT id FROM moved_transactions WHERE id = ANY($1::text[])",
            transaction_ids,
        )
        return {row["id"] for row in rows}
    finally:
        await connection.close()


async def _open_holds_at(dsn: str) -> set[str]:
    connection = await asyncpg.connect(dsn)
    try:
        return {row["transaction_id"] for row in await connection.fetch("SELECT * FROM holds")}
    finally:
        await connection.close()


@pytest.mark.timeout(180)
async def test_open_holds_move_with_their_slot_and_settle_once_at_the_target(
    cluster: Cluster,
) -> None:
    key = customer_on(SOURCE, SHARD_COUNT, skip=11)
    async with security.channel(cluster.target) as channel:
        client = Client(channel)
        await _refusals(cluster, client, key)
        holds, before = await _open_before(client, key)
        expires_at_s = time.time() + EXPIRY_S

        stop, seen = asyncio.Event(), dict[str, int]()
        load = asyncio.create_task(retrying_load(client, key, stop, seen))
        holding = asyncio.create_task(_hold_load(client, key, stop, seen))
        await asyncio.sleep(0.3)
        slot = str(slot_of(key))
        move = ("move", "--slots", slot, "--to", str(TARGET))
        code, _, stderr = await run_slots(
            cluster.control_dsn, *move, failpoint="slots.after_move_out=exit"
        )
        assert code == -9, stderr  # killed after the move-out: asked again, it hands the same
        code, stdout, stderr = await run_slots(cluster.control_dsn, "resume")
        assert code == 0 and "resumed and finished" in stdout, (stdout, stderr)
        await asyncio.sleep(0.3)
        stop.set()
        count = await load + await holding
        print("retryable answers seen by the client:", seen)

        await _check_moved_open(cluster, client, key, count)
        await _settle(client, key, holds, before, expires_at_s)
        await _check_settled(cluster, client, key, count)


async def _hold_load(client: Client, key: str, stop: asyncio.Event, seen: dict[str, int]) -> int:
    """Holds of 1 (dep to sav), each posted in full with the same ids until done, until
    stopped: how many. One open at the move-out moves open and is posted at the target."""
    count = 0
    while not stop.is_set():
        hold = _hold(f"{key}/lh-{count}", f"{key}/dep", f"{key}/sav", 1, timeout_s=600)
        await post_until_done(client, hold, seen)
        await asyncio.sleep(0.02)
        await post_until_done(client, _post(f"{key}/lp-{count}", hold.id), seen)
        count += 1
    return count


async def _refusals(cluster: Cluster, client: Client, key: str) -> None:
    """Holds that would span two shards after the move keep their slots where they are, with
    the reason, at once (no waiting: they are open for days)."""
    spanning = customer_on(SOURCE, SHARD_COUNT, skip=12)
    far = customer_on(FAR, SHARD_COUNT, skip=12)
    piece_owner = customer_on(SOURCE, SHARD_COUNT, skip=13)
    other = customer_on(SOURCE, SHARD_COUNT, skip=14)
    sharer = customer_on(SOURCE, SHARD_COUNT, skip=15)
    beside = customer_on(TARGET, SHARD_COUNT, skip=15)
    assert len({slot_of(k) for k in (key, spanning, piece_owner, other, sharer)}) == 5
    for customer in (spanning, far, piece_owner, other, sharer, beside):
        await client.create(
            account("@cash"), account(f"{customer}/dep"), account(f"{customer}/sav")
        )
        await _created(client, transfer(f"{customer}/fund", "@cash", f"{customer}/dep", 1_000))
    await _created(
        client,
        _hold(f"{spanning}/h1", f"{spanning}/dep", f"{other}/sav", 10),  # two slots
        _hold(f"{far}/h1", f"{far}/dep", f"{piece_owner}/dep", 10),  # cross-shard: a piece
        # Pieces at SOURCE and at TARGET: the first cannot join the second.
        pb.Transaction(
            id=f"{far}/h2", code=1, pending=True,
            legs=[
                leg(f"{far}/dep", DEBIT, 30), leg(f"{sharer}/sav", CREDIT, 10),
                leg(f"{beside}/sav", CREDIT, 20),
            ],
        ),
    )  # fmt: skip
    cases = {  # slot: (to, why)
        str(slot_of(spanning)): (TARGET, "both in and out of the slots"),
        # A piece joins no other piece of its hold (they share their id).
        str(slot_of(sharer)): (TARGET, f"shard {TARGET}, which holds another piece of its hold"),
    }
    for slot, (to, why) in cases.items():
        started = time.monotonic()
        code, stdout, stderr = await run_slots(
            cluster.control_dsn, "move", "--slots", slot, "--to", str(to),
            "--held-wait-s", "100",
        )  # fmt: skip
        assert (code, why in stderr) == (2, True), (slot, stdout, stderr)
        # Named by the source before the pre-copy staged anything (not at its fence).
        assert f"slot {slot}: " in stderr, stderr
        # Not asked again for --held-wait-s: refused at once (the process's start, loaded
        # machine included, takes far less).
        assert time.monotonic() - started < 50, "refused at once, not waited for"
    # Voided, the holds let the slots go another time; they stay and take writes meanwhile.
    await _created(
        client,
        _void(f"{spanning}/v1", f"{spanning}/h1"),
        _void(f"{far}/v1", f"{far}/h1"),
        _void(f"{far}/v2", f"{far}/h2"),
    )


async def _open_before(
    client: Client, key: str
) -> tuple[dict[str, pb.Transaction], dict[str, pb.ItemResult]]:
    """The customer's accounts funded, a hold partly captured before the move (its record
    moves settled) and four open: two on its own accounts (one expiring), two on @cash."""
    codes = await client.create(
        account("@cash"), account(f"{key}/dep", no_overdraft=True), account(f"{key}/sav")
    )
    assert codes[1:] == [CREATED, CREATED]
    await _created(client, transfer(f"{key}/fund", "@cash", f"{key}/dep", 10_000))
    holds = {
        "h0": _hold(f"{key}/h0", f"{key}/dep", f"{key}/sav", 100),
        "h1": _hold(f"{key}/h1", f"{key}/dep", f"{key}/sav", 1_000),
        "h2": _hold(f"{key}/h2", f"{key}/dep", "@cash", 500),
        "h3": _hold(f"{key}/h3", f"{key}/dep", f"{key}/sav", 300, timeout_s=EXPIRY_S),
        "h4": _hold(f"{key}/h4", "@cash", f"{key}/sav", 200),
    }
    results = await _created(client, *holds.values())
    before = {name: result for name, result in zip(holds, results, strict=True)}
    partial = _post(
        f"{key}/p0", f"{key}/h0", leg(f"{key}/dep", DEBIT, 40), leg(f"{key}/sav", CREDIT, 40)
    )
    before["p0"] = (await _created(client, partial))[0]
    return holds, before


async def _check_moved_open(cluster: Cluster, client: Client, key: str, count: int) -> None:
    """At the target the open holds' amounts are pending, so the available balance holds
    them back; the source keeps none of them open."""
    expiring = (await client.transaction(f"{key}/h3")).status == pb.TRANSACTION_STATUS_PENDING
    h3 = 300 if expiring else 0  # expired already at the target, on a very slow machine
    dep, sav = await client.balance(f"{key}/dep"), await client.balance(f"{key}/sav")
    assert (dep.debits_posted, dep.credits_posted) == (40 + count, 10_000)
    assert (dep.debits_pending, dep.credits_pending) == (1_000 + 500 + h3, 0)
    assert dep.available == 10_000 - 40 - count - 1_500 - h3
    assert (sav.debits_pending, sav.credits_pending) == (0, 1_000 + h3 + 200)
    async with security.channel(cluster.nodes[TARGET].target) as channel:
        assert (await Client(channel).balance(f"{key}/dep")).debits_pending == 1_500 + h3
    # Beyond the available balance (even were h3 to expire meanwhile), within the posted one.
    too_much = transfer(f"{key}/over", f"{key}/dep", f"{key}/sav", dep.available + 301)
    assert await client.codes(too_much) == [pb.RESULT_CODE_INSUFFICIENT_FUNDS]
    hold_ids = [f"{key}/h{n}" for n in (1, 2, 4)] + ([f"{key}/h3"] if expiring else [])
    assert not set(hold_ids) & await _open_holds_at(cluster.nodes[SOURCE].dsn)
    assert set(hold_ids) <= await _open_holds_at(cluster.nodes[TARGET].dsn)
    record = await client.transaction(f"{key}/h1")
    assert record.status == pb.TRANSACTION_STATUS_PENDING


async def _settle(
    client: Client,
    key: str,
    holds: dict[str, pb.Transaction],
    before: dict[str, pb.ItemResult],
    expires_at_s: float,
) -> None:
    """h1 posted in part, h2 voided, h4 posted in full, h3 left to expire; every one once,
    each replay (of the holds, of the pre-move capture, of these) replayed as first answered."""
    partial = _post(
        f"{key}/p1", f"{key}/h1", leg(f"{key}/dep", DEBIT, 600), leg(f"{key}/sav", CREDIT, 600)
    )
    fates = [partial, _void(f"{key}/v2", f"{key}/h2"), _post(f"{key}/p4", f"{key}/h4")]
    first = await _created(client, *fates)
    again = await client.post(*fates, *holds.values())
    assert [(r.code, r.timestamp_ns) for r in again[:3]] == [
        (REPLAYED, r.timestamp_ns) for r in first
    ]
    for name, result in zip(holds, again[3:], strict=True):
        assert (result.code, result.timestamp_ns) == (REPLAYED, before[name].timestamp_ns), name
    capture = _post(
        f"{key}/p0", f"{key}/h0", leg(f"{key}/dep", DEBIT, 40), leg(f"{key}/sav", CREDIT, 40)
    )
    replayed = (await client.post(capture))[0]
    assert (replayed.code, replayed.timestamp_ns) == (REPLAYED, before["p0"].timestamp_ns)
    twice = await client.codes(_post(f"{key}/p1b", f"{key}/h1"), _void(f"{key}/v1b", f"{key}/h2"))
    assert twice == [pb.RESULT_CODE_PENDING_ALREADY_RESOLVED] * 2
    # h3 expires at the target's sweep (the source released it: it cannot expire there).
    while (await client.transaction(f"{key}/h3")).status == pb.TRANSACTION_STATUS_PENDING:
        assert time.time() < expires_at_s + 20, "the moved hold never expired"
        await asyncio.sleep(0.2)
    assert (await client.transaction(f"{key}/h3")).status == pb.TRANSACTION_STATUS_PENDING_EXPIRED
    late = await client.codes(_post(f"{key}/p3", f"{key}/h3"))
    assert late == [pb.RESULT_CODE_PENDING_EXPIRED]


async def _check_settled(cluster: Cluster, client: Client, key: str, count: int) -> None:
    dep, sav = await client.balance(f"{key}/dep"), await client.balance(f"{key}/sav")
    check((dep.debits_posted, dep.credits_posted) == (40 + 600 + count, 10_000), "dep posted")
    check((dep.debits_pending, dep.credits_pending) == (0, 0), "dep released")
    check(dep.available == 10_000 - 640 - count, "dep available")
    check((sav.debits_posted, sav.credits_posted) == (0, 40 + 600 + 200 + count), "sav posted")
    check((sav.debits_pending, sav.credits_pending) == (0, 0), "sav released")
    expiry = ids.expiry_id(f"{key}/h3")
    source, target = cluster.nodes[SOURCE].dsn, cluster.nodes[TARGET].dsn
    assert await _records_at(target, [expiry]) == {expiry}
    assert await _records_at(source, [expiry]) == set()  # never expired at the source too
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == [], node.dsn
    audit_code, report = await audit_json(*cluster.dsns)
    assert audit_code == 0, report
    assert await moves_net(cluster.dsns) == 0


# ---- held pieces of cross-shard holds move with their accounts ----


@pytest.mark.timeout(180)
async def test_held_pieces_of_cross_shard_holds_move_with_their_accounts_and_settle_there(
    cluster: Cluster,
) -> None:
    """Three cross-shard holds coordinated at FAR hold amounts on a SOURCE customer's
    accounts (their pieces at SOURCE); the customer's slot moves to TARGET, the mover killed
    after the move-out and resumed. The pieces are held at TARGET (the available balance holds
    them back), none at SOURCE; then one hold is posted in part, one voided, one posted in
    full, each once, through a gateway that read the holds before the move; replays are
    replayed; every audit is clean and the moves net to zero."""
    owner = customer_on(SOURCE, SHARD_COUNT, skip=21)
    far = customer_on(FAR, SHARD_COUNT, skip=21)
    for customer in (owner, far):
        await cluster_client_create(cluster, customer)
    async with security.channel(cluster.target) as channel:
        client = Client(channel)
        holds = {
            "a": _hold(f"{far}/xa", f"{far}/dep", f"{owner}/dep", 100),
            "b": _hold(f"{far}/xb", f"{far}/dep", f"{owner}/sav", 200),
            "c": _hold(f"{far}/xc", f"{owner}/dep", f"{far}/sav", 300),
        }
        first = {n: r for n, r in zip(holds, await _created(client, *holds.values()), strict=True)}
        pieces = await _pieces_at(cluster.nodes[SOURCE].dsn, [h.id for h in holds.values()])
        assert len(pieces) == 3, pieces
        # Read before the move: this gateway knows where the pieces were.
        assert (await client.transaction(f"{far}/xa")).status == pb.TRANSACTION_STATUS_PENDING

        slot = str(slot_of(owner))
        move = ("move", "--slots", slot, "--to", str(TARGET))
        code, _, stderr = await run_slots(
            cluster.control_dsn, *move, failpoint="slots.after_move_out=exit"
        )
        assert code == -9, stderr
        code, stdout, stderr = await run_slots(cluster.control_dsn, "resume")
        assert code == 0 and "resumed and finished" in stdout, (stdout, stderr)

        await _check_pieces_moved(cluster, client, owner, pieces)
        await _settle_moved_pieces(cluster, client, owner, far, holds, first, pieces)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == [], node.dsn
    audit_code, report = await audit_json(*cluster.dsns)
    assert audit_code == 0, report
    assert await moves_net(cluster.dsns) == 0


async def _check_pieces_moved(
    cluster: Cluster, client: Client, owner: str, pieces: list[str]
) -> None:
    """The pieces are held at the target, none at the source; the available balance holds
    them back."""
    source, target = cluster.nodes[SOURCE].dsn, cluster.nodes[TARGET].dsn
    assert not set(pieces) & await _open_holds_at(source)
    assert set(pieces) <= await _open_holds_at(target)
    dep, sav = await client.balance(f"{owner}/dep"), await client.balance(f"{owner}/sav")
    assert (dep.debits_pending, dep.credits_pending) == (300, 100)
    assert (sav.debits_pending, sav.credits_pending) == (0, 200)
    assert dep.available == 1_000 - 300
    too_much = transfer(f"{owner}/over", f"{owner}/dep", f"{owner}/sav", 701)
    assert await client.codes(too_much) == [pb.RESULT_CODE_INSUFFICIENT_FUNDS]


async def _settle_moved_pieces(
    cluster: Cluster,
    client: Client,
    owner: str,
    far: str,
    holds: dict[str, pb.Transaction],
    first: dict[str, pb.ItemResult],
    pieces: list[str],
) -> None:
    """One hold posted in part, one voided, one posted in full: each once, settled at the
    target; every replay replayed as first answered."""
    source, target = cluster.nodes[SOURCE].dsn, cluster.nodes[TARGET].dsn
    fates = [
        _post(
            f"{far}/pa",
            f"{far}/xa",
            leg(f"{far}/dep", DEBIT, 40),
            leg(f"{owner}/dep", CREDIT, 40),
        ),
        _void(f"{far}/vb", f"{far}/xb"),
        _post(f"{far}/pc", f"{far}/xc"),
    ]
    decided = await _created(client, *fates)
    again = await client.post(*fates, *holds.values())
    assert [(r.code, r.timestamp_ns) for r in again[:3]] == [
        (REPLAYED, r.timestamp_ns) for r in decided
    ]
    for name, result in zip(holds, again[3:], strict=True):
        assert (result.code, result.timestamp_ns) == (REPLAYED, first[name].timestamp_ns)
    assert (await client.transaction(f"{far}/xa")).status == pb.TRANSACTION_STATUS_PENDING_POSTED

    dep, sav = await client.balance(f"{owner}/dep"), await client.balance(f"{owner}/sav")
    assert (dep.debits_posted, dep.credits_posted) == (300, 1_000 + 40)
    assert (dep.debits_pending, dep.credits_pending, sav.credits_pending) == (0, 0, 0)
    assert sav.credits_posted == 0
    settled = [ids.settlement_id(p, True) for p in pieces if "/xa" in p or "/xc" in p]
    assert await _records_at(target, settled) == set(settled)
    assert await _records_at(source, settled) == set()


@pytest.mark.timeout(180)
async def test_cross_shard_holds_move_with_their_coordinator_record_and_are_decided_there(
    cluster: Cluster,
) -> None:
    """Three cross-shard holds homed in a SOURCE customer's slot (coordinated there, pieces at
    FAR) move with that slot to TARGET. Then one is posted through a gateway that committed
    it before the move, one voided, and one expires at TARGET: FAR's piece asks SOURCE at its
    deadline, hears the hold moved, asks TARGET and expires. Each fate once, every audit
    clean."""
    owner = customer_on(SOURCE, SHARD_COUNT, skip=22)
    far = customer_on(FAR, SHARD_COUNT, skip=22)
    for customer in (owner, far):
        await cluster_client_create(cluster, customer)
    source, target, far_dsn = (cluster.nodes[n].dsn for n in (SOURCE, TARGET, FAR))
    async with security.channel(cluster.target) as channel:
        client = Client(channel)
        expiring_s = 20  # past the move even on a loaded machine
        holds = [
            _hold(f"{owner}/xd", f"{owner}/dep", f"{far}/sav", 50),
            _hold(f"{owner}/xe", f"{owner}/dep", f"{far}/sav", 60, timeout_s=expiring_s),
            _hold(f"{owner}/xf", f"{far}/dep", f"{owner}/sav", 70),
        ]
        expires_at_s = time.time() + expiring_s
        await _created(client, *holds)
        hold_ids = [h.id for h in holds]
        pieces = await _pieces_at(far_dsn, hold_ids)
        assert len(pieces) == 3 and set(hold_ids) <= await _open_holds_at(source)

        code, stdout, stderr = await run_slots(
            cluster.control_dsn, "move", "--slots", str(slot_of(owner)), "--to", str(TARGET)
        )
        assert code == 0, (stdout, stderr)
        assert not set(hold_ids) & await _open_holds_at(source)
        assert set(hold_ids) <= await _open_holds_at(target)
        assert set(pieces) <= await _open_holds_at(far_dsn)  # the pieces stay where they are
        dep = await client.balance(f"{owner}/dep")
        assert (dep.debits_pending, dep.available) == (110, 1_000 - 110)

        fates = [_post(f"{owner}/pd", f"{owner}/xd"), _void(f"{owner}/vf", f"{owner}/xf")]
        decided = await _created(client, *fates)
        again = await client.post(*fates)
        assert [(r.code, r.timestamp_ns) for r in again] == [
            (REPLAYED, r.timestamp_ns) for r in decided
        ]
        decisions = [ids.settlement_id(p, "/xd" in p) for p in pieces if "/xe" not in p]
        assert await _records_at(far_dsn, decisions) == set(decisions)
        expired = next(p for p in pieces if "/xe" in p)
        while expired in await _open_holds_at(far_dsn):
            assert time.time() < expires_at_s + 60, "FAR's piece never heard its hold expire"
            await asyncio.sleep(0.3)
        assert await _records_at(far_dsn, [ids.expiry_id(expired)]) == {ids.expiry_id(expired)}
        assert await _records_at(target, [ids.expiry_id(f"{owner}/xe")]) == {
            ids.expiry_id(f"{owner}/xe")
        }
        assert (await client.transaction(f"{owner}/xe")).status == (
            pb.TRANSACTION_STATUS_PENDING_EXPIRED
        )
        dep, sav = await client.balance(f"{owner}/dep"), await client.balance(f"{far}/sav")
        assert (dep.debits_posted, dep.debits_pending, sav.credits_posted) == (50, 0, 50)
        assert (await client.balance(f"{far}/dep")).debits_pending == 0
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == [], node.dsn
    audit_code, report = await audit_json(*cluster.dsns)
    assert audit_code == 0, report
    assert await moves_net(cluster.dsns) == 0


async def cluster_client_create(cluster: Cluster, customer: str) -> None:
    async with security.channel(cluster.target) as channel:
        client = Client(channel)
        await client.create(
            account("@cash"),
            account(f"{customer}/dep", no_overdraft=True),
            account(f"{customer}/sav"),
        )
        await _created(client, transfer(f"{customer}/fund", "@cash", f"{customer}/dep", 1_000))


async def _pieces_at(dsn: str, hold_ids: list[str]) -> list[str]:
    """The held cross-shard pieces of these holds on a shard."""
    rows = await _fetch(dsn, "SELECT transaction_id FROM holds")
    held = [row["transaction_id"] for row in rows if ids.is_piece_id(row["transaction_id"])]
    return sorted(p for p in held if ids.parse_piece_id(p)[0] in hold_ids)


# ---- a move of many pages ----

NODE_PAGE_ITEM_COUNT = 3  # entries per block of a move's side
COPY_PAGE_ITEM_COUNT = 4  # accounts or records per page the mover copies


async def _fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def _restarted(cluster: InProcessCluster, shard_id: int) -> None:
    """The shard's node stopped and a new one started on its database (a new endpoint)."""
    node = cluster.nodes[shard_id]
    await node.stop()
    cluster.nodes[shard_id] = await start_node(
        node.dsn, writer=WriterConfig(move_page_item_count=NODE_PAGE_ITEM_COUNT),
        control_dsn=cluster.control_dsn, shard_id=shard_id, slot_map_poll_interval_s=0.2,
    )  # fmt: skip


async def _check_pages(dsns: list[str], page_count: int) -> None:
    """Every block of a move's side holds at most a page of its entries (and page 0 the
    source's totals); page_count pages each side here; nothing left staged."""
    for dsn, direction in zip(dsns, ("out", "in"), strict=True):
        rows = await _fetch(
            dsn,
            "SELECT p.page, count(t.id) AS entries FROM move_pages p JOIN transactions t "
            "ON t.block_sequence = p.block_sequence AND t.id LIKE '~move%' "
            f"WHERE p.direction = '{direction}' GROUP BY p.page ORDER BY p.page",
        )
        assert [row["page"] for row in rows] == list(range(page_count)), (direction, rows)
        assert all(row["entries"] <= NODE_PAGE_ITEM_COUNT + 1 for row in rows), rows
        sizes = await _fetch(dsn, "SELECT DISTINCT page_item_count FROM move_pages")
        assert [row["page_item_count"] for row in sizes] == [NODE_PAGE_ITEM_COUNT]
    assert await _fetch(dsns[1], "SELECT * FROM move_staging") == []


async def _staged_ids(dsn: str, part: str) -> list[str]:
    rows = await _fetch(dsn, f"SELECT item_id FROM move_staging WHERE part = '{part}'")
    return sorted(row["item_id"] for row in rows)


async def _progress(control_dsn: str) -> tuple[int, ...]:
    (row,) = await _fetch(
        control_dsn,
        "SELECT precopy_part, precopied_count, precopy_sequence, copy_part, copied_count "
        "FROM slot_moves WHERE state NOT IN ('done', 'abandoned')",
    )
    return tuple(row)


def _reversal(reversal_id: str, original_id: str) -> pb.Transaction:
    return pb.Transaction(id=reversal_id, code=9, reverses_id=original_id)


async def _change_after_precopy(
    client: Client, key: str, names: list[str]
) -> tuple[list[pb.Transaction], dict[str, pb.ItemResult]]:
    """Between the pre-copy and the fence, while the slot serves: a hold posted, one voided, a
    transfer reversed, accounts created in the slot, transfers to them and a new hold (what
    the copy after the fence must stage again or anew); the items and their first answers."""
    await client.create(account(f"{key}/a10"), account(f"{key}/a11"))
    items = [
        _post(f"{key}/p0", f"{key}/h0"),
        _void(f"{key}/v1", f"{key}/h1"),
        _reversal(f"{key}/r0", f"{key}/t0"),
        transfer(f"{key}/t12", names[0], f"{key}/a10", 30),
        transfer(f"{key}/t13", f"{key}/a10", f"{key}/a11", 20),
        _hold(f"{key}/h5", f"{key}/a11", names[0], 3),
    ]
    results = await _created(client, *items)
    return items, {item.id: result for item, result in zip(items, results, strict=True)}


# Why long: one move's story, step by step (the pre-copy killed and resumed, changes before the
# fence, the copy killed twice and the target restarted), each step checked where it stands.
@pytest.mark.timeout(180)
async def test_a_move_of_many_pages_survives_its_mover_killed_and_its_target_restarted(
    pg: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accounts, records and open holds several times a page move in pages (bounded blocks on
    both sides, the pre-copy and the copy in pages), the mover killed in its pre-copy and
    resumed, the slot's records changed between the pre-copy and the fence, the mover killed
    between pages of the copy twice and the target restarted mid-copy, then resumed: the copy
    after the fence stages only what changed, nothing is lost or doubled, every audit clean.
    Then a second slot whose pre-copy misses a change (its staging edited at the target) and
    holds an item the fence does not: the target refuses it and the mover copies it in full;
    and a third whose source finds too much written since its pre-copy, copied in full too."""
    writer = WriterConfig(move_page_item_count=NODE_PAGE_ITEM_COUNT)
    prefix = f"pages{os.getpid()}"
    async with in_process_cluster(pg, prefix, 2, writer=writer, slot_map_poll_interval_s=0.2) as c:
        key = customer_on(0, 2)
        names = [f"{key}/a{n}" for n in range(10)]
        transfers = [transfer(f"{key}/t{n}", names[n % 10], names[(n + 1) % 10], n + 1)
                     for n in range(12)]  # fmt: skip
        holds = [_hold(f"{key}/h{n}", names[n], names[n + 5], 10 + n) for n in range(4)]
        holds.append(_hold(f"{key}/hc", "@cash", names[9], 7))
        async with security.channel(c.target) as channel:
            client = Client(channel)
            await client.create(account("@cash"), *(account(name) for name in names))
            await _created(client, *transfers, *holds)
        flags = ("--page-item-count", str(COPY_PAGE_ITEM_COUNT))
        move = ("move", "--slots", str(slot_of(key)), "--to", "1", *flags)
        code, _, stderr = await run_slots(
            c.control_dsn, *move, failpoint="slots.between_precopy_pages=exit"
        )
        assert code == -9, stderr  # killed after the pre-copy's first page: 4 records staged
        assert len(await _staged_ids(c.dsns[1], "record")) == COPY_PAGE_ITEM_COUNT
        assert (await _progress(c.control_dsn))[:2] == (2, COPY_PAGE_ITEM_COUNT)
        code, _, stderr = await run_slots(
            c.control_dsn, "resume", *flags, failpoint="slots.after_precopy=exit"
        )
        assert code == -9, stderr  # the pre-copy resumed and finished; nothing moved out yet
        record_ids = [t.id for t in (*transfers, *holds)]
        assert await _staged_ids(c.dsns[1], "record") == sorted(record_ids)
        assert await _staged_ids(c.dsns[1], "account") == []
        precopy = await _progress(c.control_dsn)
        assert precopy[:2] == (3, len(record_ids)) and precopy[2] > 0, precopy
        async with security.channel(c.target) as channel:
            client = Client(channel)
            changes, first = await _change_after_precopy(client, key, names)
            names += [f"{key}/a10", f"{key}/a11"]
            before = [await client.balance(name) for name in names]
        record_ids += [item.id for item in changes]

        killed = "slots.between_pages=exit"
        code, _, stderr = await run_slots(c.control_dsn, "resume", *flags, failpoint=killed)
        assert code == -9, stderr  # moved out; a page of the copy (accounts) staged
        assert len(await _staged_ids(c.dsns[1], "account")) == COPY_PAGE_ITEM_COUNT
        await _restarted(c, 1)
        code, _, stderr = await run_slots(c.control_dsn, "resume", *flags, failpoint=killed)
        assert code == -9, stderr
        code, stdout, stderr = await run_slots(c.control_dsn, "resume", *flags)
        assert code == 0, stderr
        assert "resumed and finished" in stdout and "12 accounts, 23 records" in stdout, stdout
        assert "copy-again" not in stdout, stdout
        (progress,) = await _fetch(c.control_dsn, "SELECT copy_part, copied_count FROM slot_moves")
        # Only what changed after the pre-copy: the 12 accounts, the 6 records made since, the
        # 3 they post, void or reverse, and the 3 open holds the move-out released.
        assert tuple(progress) == (3, 12 + 6 + 3 + 3)
        assert await _records_at(c.dsns[1], record_ids) == set(record_ids)
        assert await _open_holds_at(c.dsns[1]) == {f"{key}/h{n}" for n in ("2", "3", "c", "5")}
        await _check_pages(c.dsns, 6)  # 16 entries each side (12 accounts, 4 holds), 3 a page
        async with security.channel(c.target) as channel:
            client = Client(channel)
            assert [await client.balance(name) for name in names] == before
            status = {n: (await client.transaction(f"{key}/{n}")).status for n in ("h0", "h1")}
            assert status == {
                "h0": pb.TRANSACTION_STATUS_PENDING_POSTED,
                "h1": pb.TRANSACTION_STATUS_PENDING_VOIDED,
            }
            assert (await client.transaction(f"{key}/t0")).reversed_by_id == f"{key}/r0"
            replays = await client.post(transfers[0], holds[0], *changes)
            assert [r.code for r in replays] == [REPLAYED] * (2 + len(changes))
            assert [r.timestamp_ns for r in replays[2:]] == [
                first[item.id].timestamp_ns for item in changes
            ]
            again = await client.codes(
                _reversal(f"{key}/r0b", f"{key}/t0"), _post(f"{key}/p0b", f"{key}/h0")
            )
            assert again == [
                pb.RESULT_CODE_ALREADY_REVERSED,
                pb.RESULT_CODE_PENDING_ALREADY_RESOLVED,
            ]
            await _created(client, _void(f"{key}/v2", holds[2].id), _post(f"{key}/p5", f"{key}/h5"))
        await _missed_change_copied_in_full(c)
        await _stale_precopy_copied_in_full(c, monkeypatch)
        for dsn in c.dsns:
            assert await audit_problems(dsn) == [], dsn
        audit_code, report = await audit_json(*c.dsns)
        assert audit_code == 0, report
        assert await moves_net(c.dsns) == 0


async def _missed_change_copied_in_full(c: InProcessCluster) -> None:
    """A slot pre-copied, then its staging at the target edited as a pre-copy missing a change
    would leave it (a transfer staged reversed) and given a record the source does not hold:
    the move-in refuses it (FAILED_PRECONDITION: the counts and digests are not the move-out's)
    and the mover copies the move in full and moves it in, exact."""
    key = customer_on(0, 2, skip=1)
    names = [f"{key}/b0", f"{key}/b1"]
    items = [transfer(f"{key}/u{n}", names[n % 2], names[(n + 1) % 2], n + 1) for n in range(3)]
    async with security.channel(c.target) as channel:
        client = Client(channel)
        await client.create(*(account(name) for name in names))
        await _created(client, *items)
        before = [await client.balance(name) for name in names]
    move = ("move", "--slots", str(slot_of(key)), "--to", "1")
    code, _, stderr = await run_slots(c.control_dsn, *move, failpoint="slots.after_precopy=exit")
    assert code == -9, stderr
    connection = await asyncpg.connect(c.dsns[1])
    try:
        body = await connection.fetchval(
            "SELECT body FROM move_staging WHERE item_id = $1", f"{key}/u0"
        )
        stale = spb.MovedRecord.FromString(body)
        stale.reversed_by_id = f"{key}/never"
        ghost = spb.MovedRecord.FromString(body)
        ghost.line = ghost.line.replace(f"{key}/u0", f"{key}/ghost", 1)
        await connection.execute(
            "UPDATE move_staging SET body = $2 WHERE item_id = $1",
            f"{key}/u0",
            stale.SerializeToString(),
        )
        await connection.execute(
            "INSERT INTO move_staging SELECT move_id, part, $2, $3 FROM move_staging "
            "WHERE item_id = $1",
            f"{key}/u0",
            f"{key}/ghost",
            ghost.SerializeToString(),
        )
    finally:
        await connection.close()
    code, stdout, stderr = await run_slots(c.control_dsn, "resume")
    assert code == 0, stderr
    assert "copying it in full again" in stderr and "stage it again" in stderr, stderr
    assert "copy-again=" in stdout and "2 accounts, 3 records" in stdout, stdout
    record_ids = [item.id for item in items]
    assert await _records_at(c.dsns[1], [*record_ids, f"{key}/ghost"]) == set(record_ids)
    async with security.channel(c.target) as channel:
        client = Client(channel)
        assert [await client.balance(name) for name in names] == before
        assert (await client.transaction(f"{key}/u0")).reversed_by_id == ""
        assert [r.code for r in await client.post(*items)] == [REPLAYED] * 3


async def _stale_precopy_copied_in_full(
    c: InProcessCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot pre-copied, then written to, its source reading at most no transaction since the
    pre-copy (the nodes run in this process): the changed records' page is refused (copy it in
    full) and the mover copies the move in full, exact."""
    key = customer_on(0, 2, skip=2)
    names = [f"{key}/c0", f"{key}/c1"]
    items = [transfer(f"{key}/w{n}", names[n % 2], names[(n + 1) % 2], n + 1) for n in range(2)]
    async with security.channel(c.target) as channel:
        client = Client(channel)
        await client.create(*(account(name) for name in names))
        await _created(client, items[0])
        move = ("move", "--slots", str(slot_of(key)), "--to", "1")
        code, _, stderr = await run_slots(
            c.control_dsn, *move, failpoint="slots.after_precopy=exit"
        )
        assert code == -9, stderr
        await _created(client, items[1])
        before = [await client.balance(name) for name in names]
    monkeypatch.setattr(store_moves, "CHANGED_SCAN_ROW_COUNT_MAX", 0)
    code, stdout, stderr = await run_slots(c.control_dsn, "resume")
    monkeypatch.undo()
    assert code == 0, stderr
    assert "copy it in full" in stderr and "copy-again=" in stdout, (stdout, stderr)
    record_ids = [item.id for item in items]
    assert await _records_at(c.dsns[1], record_ids) == set(record_ids)
    async with security.channel(c.target) as channel:
        client = Client(channel)
        assert [await client.balance(name) for name in names] == before
        assert [r.code for r in await client.post(*items)] == [REPLAYED] * 2


async def test_databases_made_before_paging_migrate_with_their_moves(
    pg: EmbeddedPostgres, dsn: str
) -> None:
    """A shard database and a control database of the schema before paging (shard migrations
    1..6, control 1..3), each with a move half done: migrated in place, the move's slots still
    refused at its source, no page recorded (a move-out of one block, done whole), nothing
    staged, and the mover's copy not begun (it copies from the start when resumed)."""
    connection = await asyncpg.connect(dsn)
    try:
        await shard_store.migrate(connection, schema.MIGRATIONS[:6])
        await connection.execute("INSERT INTO slot_moves VALUES ('ab', 7, 'out', 1, 1)")
        await shard_store.migrate(connection)
        assert await store_moves.moved_out_slots(connection, 5.0) == {7: "ab"}
        assert await store_moves.pages_done(connection, "ab", "out", 5.0) == (set(), 0)
        assert await connection.fetch("SELECT * FROM move_staging") == []
    finally:
        await connection.close(timeout=5.0)
    name = dsn.rsplit("/", 1)[1].split("?", 1)[0] + "_old_control"
    await pg.create_database_async(name)
    control_connection = await control.connect(pg.dsn(name))
    try:
        await shard_store.migrate(control_connection, schema.CONTROL_MIGRATIONS[:3])
        await control_connection.execute(
            "INSERT INTO slot_moves (move_id, slots, source_shard, target_shard, from_version, "
            "state) VALUES ('ab', '{7}', 0, 1, 1, 'out')"
        )
        await control_store.prepare(control_connection)
        move = await control_store.unfinished_move(control_connection)
        assert move is not None and move.state == "out"
        assert (move.copy_part, move.copy_after_id, move.copied_count) == (0, "", 0)
    finally:
        await control_connection.close(timeout=5.0)


async def test_the_copy_since_a_pre_copy_pages_past_a_record_named_but_not_held_here(
    dsn: str,
) -> None:
    """The changed records' pages: a record a later transaction names but this shard holds no
    hot row of (unchanged since its block: a cold one, say) is looked at and skipped, and the
    next page goes on after it rather than asking the same page again."""
    key = customer_on(0, 2, skip=3)
    legs = (Leg(f"{key}/a", True, 5, "USD"), Leg(f"{key}/b", False, 5, "USD"))
    rows = []
    for transaction_id, target_id, block in ((f"{key}/r", f"{key}/gone", 7), (f"{key}/t", "", 8)):
        spec = TransactionSpec(transaction_id, Kind.ORDINARY, legs, 1, (), "", 0, target_id)
        state = TransactionState(spec, legs, 10, Status.POSTED)
        rows.append((
            spec.id, int(spec.kind), spec.code, journal.encode_metadata(spec.metadata), "", 0,
            target_id, *journal.legs_texts(state), state.timestamp_ns, int(state.status), 0, "",
            "", block, transaction_slot(spec.id),
        ))  # fmt: skip
    connection = await asyncpg.connect(dsn)
    try:
        await shard_store.migrate(connection)
        await connection.copy_records_to_table(
            "transactions", records=rows, columns=shard_store.TRANSACTION_WRITE_COLUMNS
        )
        slots = frozenset({slot_of(key)})
        pages = []
        after_id = ""
        for _ in range(4):
            records, done, after_id = await store_moves.changed_records_page(
                connection, "ab", slots, 6, after_id, 1, 5.0
            )
            pages.append([record.spec.id for record in records])
            if done:
                break
        assert pages == [[], [f"{key}/r"], [f"{key}/t"]]  # f"{key}/gone" looked at first
        # Since block 7: only what block 8 made.
        records, done, _ = await store_moves.changed_records_page(
            connection, "ab", slots, 7, "", 9, 5.0
        )
        assert ([record.spec.id for record in records], done) == ([f"{key}/t"], True)
    finally:
        await connection.close(timeout=5.0)
