"""An account's history across slot moves (issue 14, docs/design.md "Reads across the move"): a
slot moved from shard 0 to shard 2 and then to shard 3 with postings before, between and
after; through the gateway, ListPostings in pages of every size, BalanceAt at any time, a
statement and an export over the moves, the audit after them (clean; a tampered moved record,
a move left half done named).

One in-process 4-shard cluster for the module, the slot moved twice by `tally slots move` (its
own process) in the module's fixture; the tests read it, and those that break something put
it back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest

from core.audit import (
    CLUSTER,
    AuditConfig,
    Finding,
    FindingKind,
    audit_cluster,
    export,
    exporter,
    statement,
)
from core.slots import slot_of
from shards.gateway.server import Gateway
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.audit_commands import audit_json, run_cli
from tests.support.cluster import SHARD_COUNT
from tests.support.helpers import (
    Client,
    InProcessCluster,
    account,
    gateway_on,
    in_process_cluster,
    transfer,
)
from tests.support.slot_moves import customer_on, moves_net, run_slots
from tests.support.sql import execute_with, fetch_one

CREATED = pb.RESULT_CODE_CREATED
HOLDERS = (0, 2, 3)
LIMITS = (1, 2, 3, 4, 5, 7, 100)
_numbers = itertools.count(1)


@dataclass
class Moved:
    cluster: InProcessCluster
    key: str
    move_ids: list[str]
    # Gateways started before the moves that do not poll the map again by themselves.
    lagging: list[Gateway] = field(default_factory=list)

    @property
    def dep(self) -> str:
        return f"{self.key}/dep"


async def _phase(client: Client, key: str, phase: int) -> None:
    """Transfers out of key/dep; a hold captured in the first phase, a reversal of one of its
    transfers at the next shard."""
    for n in range(4):
        item = transfer(f"{key}/p{phase}-{n}", f"{key}/dep", f"{key}/sav", 10 * phase + n + 1)
        assert await client.codes(item) == [CREATED]
    if phase == 0:
        hold = transfer(f"{key}/h", f"{key}/dep", f"{key}/sav", 70, pending=True)
        capture = pb.Transaction(id=f"{key}/hc", code=1, post_pending_id=hold.id)
        assert await client.codes(hold, capture) == [CREATED, CREATED]
    if phase == 1:
        back = pb.Transaction(id=f"{key}/r", code=9, reverses_id=f"{key}/p0-1")
        assert await client.codes(back) == [CREATED]


async def _move(cluster: InProcessCluster, slot: int, target: int) -> str:
    code, stdout, stderr = await run_slots(
        cluster.control_dsn, "move", "--slots", str(slot), "--to", str(target)
    )
    assert code == 0, stderr
    found = re.search(r"move ([0-9a-f]+) done", stdout)
    assert found is not None, stdout
    await asyncio.sleep(0.3)  # the gateway's map poll (0.2 s): it reads the move done
    return found.group(1)


@pytest.fixture(scope="module")
async def moved(pg: EmbeddedPostgres) -> AsyncIterator[Moved]:
    prefix = f"mh{os.getpid()}_{next(_numbers)}"
    options = {"slot_map_poll_interval_s": 0.2}
    async with (
        in_process_cluster(pg, prefix, SHARD_COUNT, gateway_options=options) as cluster,
        gateway_on(cluster.control_dsn, slot_map_poll_interval_s=3600.0) as lagging,
        gateway_on(cluster.control_dsn, slot_map_poll_interval_s=3600.0) as lagging_too,
        gateway_on(cluster.control_dsn, slot_map_poll_interval_s=3600.0) as lagging_three,
        gateway_on(cluster.control_dsn, slot_map_poll_interval_s=3600.0) as lagging_four,
    ):
        key = customer_on(HOLDERS[0], SHARD_COUNT, skip=5)
        async with security.channel(cluster.target) as channel:
            client = Client(channel)
            codes = await client.create(
                account("@cash"), account(f"{key}/dep"), account(f"{key}/sav")
            )
            assert codes[1:] == [CREATED, CREATED]
            fund = transfer(f"{key}/fund", "@cash", f"{key}/dep", 100_000)
            assert await client.codes(fund) == [CREATED]
            moves = []
            for phase, target in enumerate((*HOLDERS[1:], None)):
                await _phase(client, key, phase)
                if target is not None:
                    moves.append(await _move(cluster, slot_of(key), target))
        yield Moved(cluster, key, moves, [lagging, lagging_too, lagging_three, lagging_four])


@pytest.fixture
async def client(moved: Moved) -> AsyncIterator[Client]:
    async with security.channel(moved.cluster.target) as channel:
        yield Client(channel)


async def _at_node(moved: Moved, shard: int) -> list[pb.Posting]:
    """The account's postings as one node lists them (the move's entries included)."""
    async with security.channel(moved.cluster.nodes[shard].target) as channel:
        stub = Client(channel).stub
        request = pb.ListPostingsRequest(account_id=moved.dep, limit=1000)
        return list((await stub.ListPostings(request, timeout=30)).postings)


async def _expected(moved: Moved) -> tuple[list[pb.Posting], list[list[pb.Posting]]]:
    """The account's own postings, holder after holder, and each holder's raw listing."""
    raw = [await _at_node(moved, shard) for shard in HOLDERS]
    own = [p for listing in raw for p in listing if not p.transaction_id.startswith("~move")]
    return own, raw


async def _pages(client: Client, account_id: str, limit: int, **fields: int) -> list[list[str]]:
    """Every page's transaction ids, each page asked with the cursor of the one before."""
    pages: list[list[str]] = []
    cursor = ""
    while True:
        request = pb.ListPostingsRequest(
            account_id=account_id, limit=limit, cursor=cursor, **fields
        )
        page = await client.stub.ListPostings(request, timeout=30)
        pages.append([p.transaction_id for p in page.postings])
        if not page.next_cursor:
            return pages
        assert len(page.postings) == limit  # a page is full but for the last
        cursor = page.next_cursor


def _delta(posting: pb.Posting) -> tuple[int, int, int, int]:
    debit = posting.side == pb.SIDE_DEBIT
    posted, pending = posting.posted_amount, posting.pending_delta
    return (posted if debit else 0, 0 if debit else posted, pending if debit else 0,
            0 if debit else pending)  # fmt: skip


def _counters(balance: pb.Balance) -> tuple[int, int, int, int]:
    return (balance.debits_posted, balance.credits_posted, balance.debits_pending,
            balance.credits_pending)  # fmt: skip


async def test_list_postings_reads_every_holder_once_in_order_without_the_moves(
    moved: Moved, client: Client
) -> None:
    own, raw = await _expected(moved)
    # Each holder's own listing has the moves' entries: the source's end with its move-out,
    # the targets' start with their move-in.
    for listing, shard in zip(raw, HOLDERS, strict=True):
        ids = [p.transaction_id for p in listing]
        assert shard == HOLDERS[0] or ids[0].startswith("~movein/"), (shard, ids)
        assert shard == HOLDERS[-1] or ids[-1].startswith("~moveout/"), (shard, ids)
    expected = [p.transaction_id for p in own]
    boundaries = list(itertools.accumulate(
        len([p for p in listing if not p.transaction_id.startswith("~move")]) for listing in raw
    ))[:-1]  # fmt: skip
    for limit in LIMITS:
        pages = await _pages(client, moved.dep, limit)
        assert [t for page in pages for t in page] == expected, limit
    # Pages of these sizes start and end everywhere: each boundary falls inside some page.
    for boundary in boundaries:
        assert any(boundary % limit for limit in LIMITS)
    whole = await client.stub.ListPostings(
        pb.ListPostingsRequest(account_id=moved.dep, limit=1000), timeout=30
    )
    assert list(whole.postings) == own and whole.next_cursor == ""
    # The balance-after chain runs on unbroken across both moves, to the balance now.
    before = (0, 0, 0, 0)
    for posting in whole.postings:
        step = _delta(posting)
        after = tuple(a + b for a, b in zip(before, step, strict=True))
        assert _counters(posting.balance_after) == after, posting
        before = after
    assert before == _counters(await client.balance(moved.dep))
    # A time range across the moves: the postings in it, from every holder.
    first, last = own[2].timestamp_ns, own[-2].timestamp_ns
    ranged = await _pages(client, moved.dep, 3, from_ns=first, to_ns=last)
    in_range = [p.transaction_id for p in own if first <= p.timestamp_ns < last]
    assert [t for page in ranged for t in page] == in_range


async def test_balance_at_any_time_is_the_recomputed_balance(moved: Moved, client: Client) -> None:
    own, raw = await _expected(moved)

    async def at(at_ns: int) -> pb.BalanceAtResponse:
        request = pb.BalanceAtRequest(account_id=moved.dep, at_ns=at_ns)
        response: pb.BalanceAtResponse = await client.stub.BalanceAt(request, timeout=30)
        return response

    times = sorted({p.timestamp_ns for p in own})
    for moment in times:
        last = [p for p in own if p.timestamp_ns <= moment][-1]
        answer = await at(moment)
        assert _counters(answer.balance) == _counters(last.balance_after), moment
        assert answer.as_of_sequence == last.sequence
    # Before the first posting: nothing yet.
    early = await at(times[0] - 1)
    assert _counters(early.balance) == (0, 0, 0, 0) and early.as_of_sequence == 0
    # In each move's pause (after its move-out, before its move-in) and right at its ends: the
    # balance the account left its source with.
    for source, target in itertools.pairwise(raw):
        out_ns = source[-1].timestamp_ns
        in_ns = target[0].timestamp_ns
        left_with = [p for p in own if p.timestamp_ns < out_ns][-1].balance_after
        for moment in (out_ns, (out_ns + in_ns) // 2, in_ns):
            assert _counters((await at(moment)).balance) == _counters(left_with), moment
    now = await at(2**62)
    assert _counters(now.balance) == _counters(await client.balance(moved.dep))


async def test_bad_page_tokens_are_invalid_arguments(moved: Moved, client: Client) -> None:
    first = await client.stub.ListPostings(
        pb.ListPostingsRequest(account_id=moved.dep, limit=2), timeout=30
    )
    cursor = first.next_cursor
    assert cursor
    other = f"{moved.key}/sav"
    edited = cursor[:-2] + ("00" if not cursor.endswith("00") else "11")
    bad = ["nonsense", "12", edited, cursor + "0", "h1." + "A" * 300, "h1.x.y"]
    for token in bad:
        request = pb.ListPostingsRequest(account_id=moved.dep, limit=2, cursor=token)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.stub.ListPostings(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, token
        assert "cursor" in (error.value.details() or ""), token
    with pytest.raises(grpc.aio.AioRpcError) as error:  # another account's cursor
        await client.stub.ListPostings(
            pb.ListPostingsRequest(account_id=other, limit=2, cursor=cursor), timeout=30
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.stub.ListPostings(
            pb.ListPostingsRequest(account_id=moved.dep, limit=1001), timeout=30
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.stub.ListPostings(
            pb.ListPostingsRequest(account_id=f"{moved.key}/ghost"), timeout=30
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_gateway_behind_the_moves_reads_them_when_the_history_says_so(
    moved: Moved, client: Client
) -> None:
    """Gateways that have not read the moves: one's BalanceAt meets the source's mark that it
    moved the account out; another's ListPostings meets the move-out at the last holder it
    knows; a third is given a cursor past the holders it knows. Each reads the moves then."""
    own, _ = await _expected(moved)
    expected = [p.transaction_id for p in own]
    behind = [f"127.0.0.1:{gateway.port}" for gateway in moved.lagging]
    async with security.channel(behind[0]) as channel:
        request = pb.BalanceAtRequest(account_id=moved.dep, at_ns=2**62)
        now = await Client(channel).stub.BalanceAt(request, timeout=30)
    assert _counters(now.balance) == _counters(await client.balance(moved.dep))
    async with security.channel(behind[1]) as channel:
        assert [t for page in await _pages(Client(channel), moved.dep, 4) for t in page] == (
            expected
        )
    pages, cursor = [], ""
    while len(pages) < len(expected) - 2:  # a cursor into the last holder's postings
        request = pb.ListPostingsRequest(account_id=moved.dep, limit=1, cursor=cursor)
        page = await client.stub.ListPostings(request, timeout=30)
        pages.append(page.postings[0].transaction_id)
        cursor = page.next_cursor
    async with security.channel(behind[2]) as channel:
        request = pb.ListPostingsRequest(account_id=moved.dep, limit=100, cursor=cursor)
        rest = await Client(channel).stub.ListPostings(request, timeout=30)
    assert pages + [p.transaction_id for p in rest.postings] == expected


async def test_a_record_changed_after_its_move_is_read_as_it_is_now_not_as_it_left(
    moved: Moved, client: Client
) -> None:
    """p0-1 was made at the first holder, moved with its slot and reversed at the second. The
    holders before the owner answer it wrong_shard (their copy is as it left); a gateway
    behind the moves asks again under a reloaded map, and reads it reversed."""
    transaction_id = f"{moved.key}/p0-1"
    for shard in HOLDERS[:-1]:
        async with security.channel(moved.cluster.nodes[shard].target) as channel:
            stub = Client(channel).stub
            request = pb.GetTransactionsRequest(ids=[transaction_id, f"{moved.key}/nothing"])
            answer = await stub.GetTransactions(request, timeout=30)
        codes = [lookup.code for lookup in answer.results]
        assert codes == [pb.RESULT_CODE_WRONG_SHARD] * 2, (shard, answer)
    async with security.channel(f"127.0.0.1:{moved.lagging[3].port}") as channel:
        behind = await Client(channel).transaction(transaction_id)
    assert behind.reversed_by_id == f"{moved.key}/r"
    assert behind == await client.transaction(transaction_id)


async def _statement(moved: Moved, from_ns: int, to_ns: int) -> statement.Statement:
    connections = [await asyncpg.connect(dsn) for dsn in moved.cluster.dsns]
    try:
        return await statement.load_statement(connections, moved.dep, from_ns, to_ns, 30.0)
    finally:
        for connection in connections:
            await connection.close()


async def test_a_statement_over_the_moves_has_every_holders_lines(moved: Moved) -> None:
    own, _ = await _expected(moved)
    lines = [p for p in own if p.posted_amount]
    natural = lambda p: p.balance_after.credits_posted - p.balance_after.debits_posted  # noqa: E731
    # The whole history, and a period starting between the moves and ending after the second.
    periods = [(1, 2**62), (lines[len(lines) // 2].timestamp_ns, lines[-2].timestamp_ns)]
    for from_ns, to_ns in periods:
        read = await _statement(moved, from_ns, to_ns)
        inside = [p for p in lines if from_ns <= p.timestamp_ns < to_ns]
        assert [line.transaction_id for line in read.lines] == [p.transaction_id for p in inside]
        assert [line.shard for line in read.lines] == sorted(line.shard for line in read.lines)
        opening = [p for p in lines if p.timestamp_ns < from_ns]
        assert read.opening_balance == (natural(opening[-1]) if opening else 0)
        assert read.closing_balance == natural(inside[-1])
        assert read.consistent and read.account.shard_count == len(HOLDERS)
    # As the auditor runs it.
    arguments = [a for dsn in moved.cluster.dsns for a in ("--dsn", dsn)]
    code, stdout, stderr = await run_cli(
        "statement", *arguments, moved.dep, "--from", "1970-01-02",
        "--to", "2100-01-01",
    )  # fmt: skip
    assert code == 0, stderr
    assert "~move" not in stdout and f"{moved.key}/p2-3" in stdout and "WARNING" not in stdout


async def test_an_export_over_the_moves_verifies_with_each_shards_part(
    moved: Moved, tmp_path: Path
) -> None:
    for shard, dsn in enumerate(moved.cluster.dsns):
        directory = tmp_path / f"shard-{shard}"
        directory.mkdir()
        connection = await asyncpg.connect(dsn)
        try:
            await exporter.export_shard(
                connection, directory, str(shard), exporter.Selection(), "csv", 30.0
            )
        finally:
            await connection.close()
    verification = export.verify_export(tmp_path)
    assert verification.error_count == 0, verification.errors
    # Each holder's journal holds the account's postings there, the moves' entries with them.
    for shard in HOLDERS:
        text = (tmp_path / f"shard-{shard}" / "postings.csv").read_text()
        assert moved.dep in text and "~move" in text, shard


# ---- the audit across the moves ----


async def _audit(moved: Moved) -> list[Finding]:
    config = AuditConfig(statement_timeout_s=60.0, hold_grace_s=None)
    report = await audit_cluster(moved.cluster.dsns, config)
    assert report.complete and report.cross_shard.checked, report.cross_shard.reason
    return report.problems


async def _one_record(moved: Moved, shard: int, move_id: str) -> tuple[str, str]:
    """A record move_id brought to shard: (its id, its metadata as stored)."""
    row = await fetch_one(
        moved.cluster.dsns[shard],
        "SELECT id, metadata FROM moved_transactions WHERE move_id = $1 ORDER BY id LIMIT 1",
        move_id,
    )
    return row["id"], row["metadata"]


async def test_the_audit_after_the_moves_is_clean_and_names_an_altered_moved_record(
    moved: Moved,
) -> None:
    assert await _audit(moved) == []
    assert await moves_net(moved.cluster.dsns) == 0
    first_move, target = moved.move_ids[0], HOLDERS[1]
    record_id, metadata = await _one_record(moved, target, first_move)
    altered = "UPDATE moved_transactions SET metadata = $2 WHERE id = $1"
    await execute_with(moved.cluster.dsns[target], altered, record_id, '{"forged":"yes"}')
    try:
        found = {(f.kind, f.shard, f.move_id, f.transaction_id) for f in await _audit(moved)}
    finally:
        await execute_with(moved.cluster.dsns[target], altered, record_id, metadata)
    assert (FindingKind.MOVED_RECORDS_MISMATCH, target, first_move, "") in found
    assert (FindingKind.MOVED_RECORD_ALTERED, CLUSTER, first_move, record_id) in found
    assert await _audit(moved) == []


async def test_a_move_in_posting_more_than_its_move_out_took_is_named(moved: Moved) -> None:
    second_move, target = moved.move_ids[1], HOLDERS[2]
    entry_id = f"~movein/{second_move}/{moved.dep}"
    legs = await fetch_one(
        moved.cluster.dsns[target],
        "SELECT COALESCE(applied_legs, legs) AS applied_legs FROM transactions WHERE id = $1",
        entry_id,
    )
    original = legs["applied_legs"]
    legs_text = original.split(",")
    first = next(n for n, leg in enumerate(legs_text) if " @moves/" in leg)
    side, account_id, amount, currency = legs_text[first].split(" ")
    legs_text[first] = f"{side} {account_id} {int(amount) + 1} {currency}"  # one leg: 1 more
    inflated = ",".join(legs_text)
    altered = "UPDATE transactions SET applied_legs = $2 WHERE id = $1"
    await execute_with(moved.cluster.dsns[target], altered, entry_id, inflated)
    try:
        found = {(f.kind, f.move_id) for f in await _audit(moved)}
    finally:
        await execute_with(moved.cluster.dsns[target], altered, entry_id, original)
    assert (FindingKind.MOVE_UNBALANCED, second_move) in found
    assert (FindingKind.MOVES_COUNTERS_MISMATCH, "") in found
    assert await _audit(moved) == []


async def test_a_move_out_committing_to_other_records_than_its_move_in_is_named(
    moved: Moved,
) -> None:
    second_move, source = moved.move_ids[1], HOLDERS[1]
    entry_id = f"~moveout/{second_move}/~records"
    row = await fetch_one(
        moved.cluster.dsns[source], "SELECT metadata FROM transactions WHERE id = $1", entry_id
    )
    original = row["metadata"]
    summary = json.loads(original)
    summary["~moved_records"] = str(int(summary["~moved_records"]) + 1)
    altered = "UPDATE transactions SET metadata = $2 WHERE id = $1"
    await execute_with(moved.cluster.dsns[source], altered, entry_id, json.dumps(summary))
    try:
        found = {(f.kind, f.shard, f.move_id) for f in await _audit(moved)}
    finally:
        await execute_with(moved.cluster.dsns[source], altered, entry_id, original)
    assert (FindingKind.MOVED_RECORDS_MISMATCH, CLUSTER, second_move) in found
    assert await _audit(moved) == []


async def test_a_move_left_half_done_is_named_until_it_is_resumed(
    moved: Moved, client: Client
) -> None:
    key = customer_on(1, SHARD_COUNT, skip=6)
    codes = await client.create(account(f"{key}/dep"))
    assert codes == [CREATED]
    fund = transfer(f"{key}/fund", "@cash", f"{key}/dep", 500)
    assert await client.codes(fund) == [CREATED]
    control = moved.cluster.control_dsn
    code, _, stderr = await run_slots(
        control, "move", "--slots", str(slot_of(key)), "--to", "0",
        failpoint="slots.after_move_out=exit",
    )  # fmt: skip
    assert code == -9, stderr  # killed right after the source's move-out
    half = await fetch_one(control, "SELECT move_id FROM slot_moves WHERE state = 'planned'")
    try:
        found = await _audit(moved)
        assert [(f.kind, f.move_id) for f in found] == [
            (FindingKind.MOVE_HALF_DONE, half["move_id"])
        ], [str(f) for f in found]
        assert "half done" in str(found[0]) and "tally slots resume" in found[0].message
        code, report = await audit_json(*moved.cluster.dsns)  # as `tally audit` says it
        assert code == 1 and [(p["check"], p["move_id"]) for p in report["problems"]] == [
            ("moves", half["move_id"])
        ], report["problems"]
    finally:
        code, _, stderr = await run_slots(control, "resume")
        assert code == 0, stderr
    assert await _audit(moved) == []
    assert await moves_net(moved.cluster.dsns) == 0
    await asyncio.sleep(0.3)
    assert (await client.balance(f"{key}/dep")).credits_posted == 500
