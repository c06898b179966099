"""The monitor (shards/monitor) end to end: a 2-shard cluster's change stream through the relay
into a real NATS JetStream broker, consumed by the monitor; its profiles against a
recomputation from ListPostings, its gRPC service behind the guard, its alert stream across
restarts, and kill -9 of the monitor process under load.

The recomputation shares nothing with the monitor's path but the engine: it reads every
account's postings back (ListPostings through the gateway; a spread account's pieces from each
node), groups them by the client transaction their record id wraps (the id grammar of
docs/cross-shard.md, spelled out here), dates each by its record (GetTransactions through the
gateway) and feeds a fresh FlowEngine."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import pytest

from core.authority import Role
from core.flows import rules
from core.flows.engine import FlowEngine
from core.flows.model import NS_PER_DAY, AccountInfo, Flow, day_of_date
from core.model import Leg
from core.slots import SlotMap, partition_key
from shards.local.embedded_pg import EmbeddedPostgres, free_port
from shards.monitor import convert
from shards.monitor.books import Books, end_of_day_ns
from shards.monitor.consumer import POSITION_HEADER, MonitorConfig, parse_position
from shards.monitor.server import MonitorServer, MonitorServerConfig
from shards.relay.relay import Relay, RelayConfig
from shards.security.credentials import ClientSecurity, aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import monitor_pb2 as mpb
from tally.v1 import monitor_pb2_grpc as mpb_grpc
from tests.support import security
from tests.support.broker import MONITOR_NAME, Broker, running_broker
from tests.support.helpers import (
    CREDIT,
    DEBIT,
    Client,
    InProcessCluster,
    account,
    in_process_cluster,
    leg,
    transfer,
)
from tests.support.processes import fetch_rows

SHARDS = 2
WAIT_S = 60.0
CREATED = pb.RESULT_CODE_CREATED
RULES = """
[default]
window_days = 30
coverage_below = 1.0
largest_counterparty_share_above = 0.95
"""
_numbers = itertools.count(1)


def _customers(count: int) -> list[str]:
    """count customer keys, alternating between the two shards (the even map)."""
    slot_map = SlotMap.even(SHARDS)
    by_shard: dict[int, list[str]] = {0: [], 1: []}
    for n in range(10_000):
        key = f"cust-{n}"
        by_shard[slot_map.shard_of_key(key)].append(key)
    return [by_shard[i % 2][i // 2] for i in range(count)]


def _loan(key: str, first_due: str, installment: int = 5_000) -> pb.Account:
    metadata = {
        "loan.kind": "loan",
        "loan.installment": str(installment),
        "loan.first_due": first_due,
        "loan.period_days": "30",
        "loan.installments": "12",
        "loan.product": "sme",
    }
    return account(f"{key}/loan/1", code=200, metadata=metadata)


def _dated(transaction: pb.Transaction, value_date: str) -> pb.Transaction:
    transaction.value_date = value_date
    return transaction


@pytest.fixture
async def cluster(pg: EmbeddedPostgres) -> AsyncIterator[InProcessCluster]:
    async with in_process_cluster(pg, f"mon{os.getpid()}_{next(_numbers)}", SHARDS) as c:
        yield c


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path) as running:
        yield running


@contextlib.asynccontextmanager
async def _relaying(cluster: InProcessCluster, broker: Broker) -> AsyncIterator[Relay]:
    relay = Relay(
        RelayConfig(
            target=cluster.target, security=security.admin(), nats_url=broker.server.url,
            nats_tls=broker.tls(),
        )
    )  # fmt: skip
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping))
    try:
        yield relay
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=WAIT_S)


def _monitor_config(broker: Broker, checkpoint: Path) -> MonitorServerConfig:
    return MonitorServerConfig(
        consumer=MonitorConfig(
            nats_url=broker.server.url, nats_tls=broker.tls(MONITOR_NAME),
            checkpoint_path=checkpoint, checkpoint_interval_s=0.2,
        ),
        rule_set=rules.parse_rules(RULES),
        security=security.server_security(),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def _monitoring(broker: Broker, checkpoint: Path) -> AsyncIterator[MonitorServer]:
    server = MonitorServer(_monitor_config(broker, checkpoint))
    await server.start()
    task = asyncio.create_task(server.run())
    try:
        yield server
    finally:
        server.request_stop()
        await asyncio.wait_for(task, timeout=WAIT_S)


async def _heads(cluster: InProcessCluster) -> dict[int, int]:
    heads = {}
    for shard_id, dsn in enumerate(cluster.dsns):
        rows = await fetch_rows(dsn, "SELECT coalesce(max(sequence), 0) AS n FROM journal_blocks")
        heads[shard_id] = int(rows[0]["n"])
    return heads


async def _caught_up(cluster: InProcessCluster, books_of: object) -> None:
    """Until the monitor has applied every shard's last block and joined everything."""
    deadline = time.monotonic() + WAIT_S
    while True:
        heads = await _heads(cluster)
        books = books_of() if callable(books_of) else books_of
        if books.positions == heads and books.joiner.pending_count == 0:  # type: ignore[attr-defined]
            return
        assert time.monotonic() < deadline, (heads, books.positions, books.joiner.state())  # type: ignore[attr-defined]
        await asyncio.sleep(0.1)


async def _post_ok(client: Client, *transactions: pb.Transaction) -> None:
    results = await client.post(*transactions)
    assert [r.code for r in results] == [CREATED] * len(transactions), results


# ---- the books every test posts ----


async def _open_books(client: Client, keys: list[str]) -> list[pb.Account]:
    accounts = [account("@cash"), account("@funding/loans")]
    for n, key in enumerate(keys):
        accounts += [account(f"{key}/dep"), _loan(key, f"2026-06-{10 + n % 10:02d}")]
    assert await client.create(*accounts) == [CREATED] * len(accounts)
    for key in keys:
        await _post_ok(
            client,
            _dated(transfer(f"{key}/disb", f"{key}/loan/1", f"{key}/dep", 60_000), "2026-06-01"),
        )
    return accounts


async def _a_month(client: Client, keys: list[str], month: int, seed: int) -> None:
    """Value-dated sales, payments between customers (cross-shard), a cross-shard hold posted in
    part, a reversal, linked transfers and repayments: a month of days for every key."""
    rng = random.Random(seed)
    a, b = keys[0], keys[1]
    for day in range(1, 29, 3):
        date = f"2026-{month:02d}-{day:02d}"
        batch = []
        for key in keys:
            batch.append(
                _dated(transfer(f"{key}/sale-{month}-{day}", "@cash", f"{key}/dep",
                                rng.randint(500, 3_000)), date)
            )  # fmt: skip
        batch.append(
            _dated(
                transfer(f"{b}/pay-{month}-{day}", f"{b}/dep", f"{a}/dep", rng.randint(1, 900)),
                date,
            )
        )
        await _post_ok(client, *batch)
    date = f"2026-{month:02d}-15"
    await _post_ok(
        client,
        _dated(transfer(f"{a}/hold-{month}", f"{a}/dep", f"{b}/dep", 3_000, pending=True), date),
    )
    post = pb.Transaction(
        id=f"{a}/post-{month}", post_pending_id=f"{a}/hold-{month}", code=1,
        legs=[leg(f"{a}/dep", DEBIT, 2_000), leg(f"{b}/dep", CREDIT, 2_000)], value_date=date,
    )  # fmt: skip
    await _post_ok(client, post)
    reversal = pb.Transaction(
        id=f"{b}/rev-{month}", reverses_id=f"{b}/pay-{month}-1", value_date=date, code=1
    )
    await _post_ok(client, reversal)
    linked = [
        _dated(transfer(f"{a}/link-{month}-1", f"{a}/dep", f"{b}/dep", 700, linked=True), date),
        _dated(transfer(f"{a}/link-{month}-2", f"{b}/dep", f"{a}/dep", 300), date),
    ]
    await _post_ok(client, *linked)
    for key in keys:
        await _post_ok(
            client,
            _dated(transfer(f"{key}/repay-{month}", f"{key}/dep", f"{key}/loan/1", 5_000),
                   f"2026-{month:02d}-20"),
        )  # fmt: skip


# ---- the recomputation ----


def _client_id(transaction_id: str) -> str | None:
    """The client transaction a record id wraps: ~commit/ of a participant's ~piece/A/T."""
    if not transaction_id.startswith("~"):
        return transaction_id
    inner = transaction_id.removeprefix("~commit/")
    if inner != transaction_id and inner.startswith("~piece/"):
        return inner.split("/", 2)[2]
    return None


async def _postings(stub: object, account_id: str) -> list[pb.Posting]:
    found: list[pb.Posting] = []
    cursor = ""
    while True:
        page = await stub.ListPostings(  # type: ignore[attr-defined]
            pb.ListPostingsRequest(account_id=account_id, cursor=cursor, limit=1000), timeout=30
        )
        found += page.postings
        if not page.next_cursor:
            return found
        cursor = page.next_cursor


async def _recomputed(cluster: InProcessCluster, accounts: list[pb.Account]) -> FlowEngine:
    amounts: dict[str, dict[tuple[str, bool, str], int]] = {}
    currency = {a.id: a.currency for a in accounts}
    async with security.channel(cluster.target) as channel:
        gateway = Client(channel).stub
        postings = []
        for record in accounts:
            if record.id.startswith("@"):
                for node in cluster.nodes:
                    async with security.channel(node.target) as node_channel:
                        postings += await _postings(Client(node_channel).stub, record.id)
            else:
                postings += await _postings(gateway, record.id)
        # A participant's settlement of a cross-shard hold's piece names the client's post
        # (its metadata "resolution"): its postings are that post's money.
        settlements = sorted(
            {p.transaction_id for p in postings if p.transaction_id.startswith("~commit/")}
        )
        owners = {}
        for node in cluster.nodes:
            async with security.channel(node.target) as node_channel:
                found = await Client(node_channel).stub.GetTransactions(
                    pb.GetTransactionsRequest(ids=settlements), timeout=30
                )
            for identifier, lookup in zip(settlements, found.results, strict=True):
                resolution = lookup.transaction.transaction.metadata.get("resolution")
                if lookup.code == pb.RESULT_CODE_OK and resolution:
                    owners[identifier] = resolution
        for posting in postings:
            key = owners.get(posting.transaction_id) or _client_id(posting.transaction_id)
            if not posting.posted_amount or key is None:
                continue
            entry = (posting.account_id, posting.side == DEBIT, currency[posting.account_id])
            legs = amounts.setdefault(key, {})
            legs[entry] = legs.get(entry, 0) + posting.posted_amount
        ids = sorted(amounts)
        looked_up = await gateway.GetTransactions(pb.GetTransactionsRequest(ids=ids), timeout=30)
    flows = []
    for transaction_id, lookup in zip(ids, looked_up.results, strict=True):
        assert lookup.code == pb.RESULT_CODE_OK, (transaction_id, lookup.message)
        value_date = lookup.transaction.transaction.value_date
        at_ns = (
            day_of_date(value_date) * NS_PER_DAY if value_date else lookup.transaction.timestamp_ns
        )
        legs = tuple(
            Leg(account_id, is_debit, amount, cur)
            for (account_id, is_debit, cur), amount in sorted(
                amounts[transaction_id].items(), key=lambda i: (i[0][0], not i[0][1], i[0][2])
            )
        )
        flows.append(Flow(transaction_id, at_ns, 0, (), legs))
    engine = FlowEngine()
    for record in accounts:
        engine.add_account(
            AccountInfo(
                record.id, record.currency, record.code, tuple(sorted(record.metadata.items()))
            )
        )
    for flow in sorted(flows, key=lambda f: f.timestamp_ns):
        engine.add_flow(flow)
    return engine


def _keys_of(accounts: Iterable[pb.Account]) -> list[str]:
    return sorted({partition_key(a.id) for a in accounts if not a.id.startswith("@")})


# ---- tests ----


async def test_profiles_equal_a_recomputation_from_list_postings(
    cluster: InProcessCluster, broker: Broker, tmp_path: Path
) -> None:
    keys = _customers(4)
    async with security.channel(cluster.target) as channel:
        client = Client(channel)
        accounts = await _open_books(client, keys)
        async with _relaying(cluster, broker), _monitoring(broker, tmp_path / "cp.json") as monitor:
            for month in (6, 7):
                await _a_month(client, keys, month, seed=month)
            await _caught_up(cluster, lambda: monitor.consumer.books)
            books = monitor.consumer.books
            reference = await _recomputed(cluster, accounts)
            assert books.engine.day == reference.day
            as_of = end_of_day_ns(reference.day or 0)
            for key in _keys_of(accounts):
                assert books.engine.profile(key, as_of) == reference.profile(key, as_of), key
            # Cross-shard pieces were joined, not profiled one by one: nothing split, nothing
            # left waiting, every posted posting attributed.
            counters = books.joiner.counters
            assert counters.split_count == 0
            assert counters.unattributed_posting_count == 0
            # The gRPC answer is the same profile.
            async with aio_channel(f"127.0.0.1:{monitor.port}", security.admin()) as mchannel:
                stub = mpb_grpc.MonitorStub(mchannel)
                for key in _keys_of(accounts):
                    answer = await stub.GetFlowProfile(
                        mpb.GetFlowProfileRequest(partition_key=key), timeout=10
                    )
                    expected = convert.profile_to_proto(
                        reference.profile(key, as_of),
                        books.engine.active_alerts(key),  # type: ignore[arg-type]
                        books.stream_sequence,
                    )
                    assert answer == expected, key
    # What the test's data exercised: a borrower on each shard paid from the other.
    profile = reference.profile(keys[0], as_of)
    assert profile is not None
    window = profile.window(90, "USD")
    assert window is not None and window.inflow > 0 and window.debt_service_paid > 0
    assert window.counterparty_count >= 2  # @cash and the other shard's customer


async def test_the_service_answers_only_within_the_callers_scope(
    cluster: InProcessCluster, broker: Broker, tmp_path: Path
) -> None:
    keys = _customers(2)
    async with security.channel(cluster.target) as channel:
        await _open_books(Client(channel), keys)
    async with _relaying(cluster, broker), _monitoring(broker, tmp_path / "cp.json") as monitor:
        await _caught_up(cluster, lambda: monitor.consumer.books)
        target = f"127.0.0.1:{monitor.port}"

        async def ask(who: ClientSecurity, key: str) -> grpc.StatusCode:
            async with aio_channel(target, who) as mchannel:
                try:
                    await mpb_grpc.MonitorStub(mchannel).GetFlowProfile(
                        mpb.GetFlowProfileRequest(partition_key=key), timeout=10
                    )
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

        async def portfolio(who: ClientSecurity) -> grpc.StatusCode:
            async with aio_channel(target, who) as mchannel:
                try:
                    answer = await mpb_grpc.MonitorStub(mchannel).GetPortfolio(
                        mpb.GetPortfolioRequest(), timeout=10
                    )
                except grpc.aio.AioRpcError as error:
                    return error.code()
                assert answer.borrower_count == 2
                return grpc.StatusCode.OK

        scoped = security.identity({Role.MONITOR}, (f"{keys[0]}/**",), name="risk")
        assert await ask(scoped, keys[0]) == grpc.StatusCode.OK
        assert await ask(scoped, keys[1]) == grpc.StatusCode.PERMISSION_DENIED
        assert await portfolio(scoped) == grpc.StatusCode.PERMISSION_DENIED
        poster = security.identity({Role.POSTER}, ("**",), name="product")
        assert await ask(poster, keys[0]) == grpc.StatusCode.PERMISSION_DENIED
        auditor = security.identity({Role.AUDITOR}, name="auditor")
        assert await portfolio(auditor) == grpc.StatusCode.OK
        admin = security.admin()
        assert await ask(admin, "no-such-key") == grpc.StatusCode.NOT_FOUND
        assert await ask(admin, "a/b") == grpc.StatusCode.INVALID_ARGUMENT
        assert await ask(admin, "") == grpc.StatusCode.INVALID_ARGUMENT
        assert await ask(admin, "bad key") == grpc.StatusCode.INVALID_ARGUMENT


async def _alerts(broker: Broker) -> list[tuple[tuple[int, int], bytes]]:
    client = await broker.connect(MONITOR_NAME)
    try:
        js = client.jetstream()
        info = await js.stream_info("TALLY_ALERTS")
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg("TALLY_ALERTS", seq)
            assert message.headers is not None and message.data is not None
            found.append((parse_position(message.headers[POSITION_HEADER]), message.data))
        return found
    finally:
        await client.close()


async def _replayed(broker: Broker) -> tuple[Books, list[tuple[tuple[int, int], bytes]]]:
    """Fresh books fed every journal message the broker holds, and the alerts they make."""
    books = Books(rules.parse_rules(RULES))
    made = []
    client = await broker.connect(MONITOR_NAME)
    try:
        js = client.jetstream()
        info = await js.stream_info("TALLY_JOURNAL")
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg("TALLY_JOURNAL", seq)
            assert message.data is not None
            for alert in books.apply(seq, pb.JournalBlock.FromString(message.data)):
                made.append(
                    (alert.position, convert.alert_to_proto(alert.alert).SerializeToString())
                )
    finally:
        await client.close()
    return books, made


async def test_a_restarted_monitor_resumes_exactly_and_publishes_each_alert_once(
    cluster: InProcessCluster, broker: Broker, tmp_path: Path
) -> None:
    keys = _customers(2)
    checkpoint = tmp_path / "cp.json"
    async with security.channel(cluster.target) as channel:
        client = Client(channel)
        accounts = await _open_books(client, keys)
        async with _relaying(cluster, broker):
            async with _monitoring(broker, checkpoint) as first:
                await _a_month(client, keys, 6, seed=1)
                await _caught_up(cluster, lambda: first.consumer.books)
            assert checkpoint.exists()
            await _a_month(client, keys, 7, seed=2)  # while no monitor runs
            async with _monitoring(broker, checkpoint) as second:
                assert second.consumer.books.stream_sequence > 0  # from its checkpoint
                await _a_month(client, keys, 8, seed=3)
                await _caught_up(cluster, lambda: second.consumer.books)
                live = second.consumer.books.checkpoint()
    replayed, made = await _replayed(broker)
    assert live == replayed.checkpoint()  # the same state, byte for byte
    published = await _alerts(broker)
    assert made, "the books made no alert: the test's data should trip coverage_below"
    assert published == made  # each alert once, in order
    assert len(_keys_of(accounts)) == 2


# ---- kill -9 of the monitor process ----


def _monitor_command(broker: Broker, checkpoint: Path, rules_path: Path, port: int) -> list[str]:
    credentials = broker.credentials
    return [
        sys.executable, "-m", "shards.cli", "monitor", "--nats-url", broker.server.url,
        "--nats-ca", str(credentials / "ca.pem"),
        "--nats-cert", str(credentials / f"{MONITOR_NAME}.pem"),
        "--nats-key", str(credentials / f"{MONITOR_NAME}.key"),
        "--rules", str(rules_path), "--checkpoint", str(checkpoint),
        "--checkpoint-interval-s", "0.3", "--listen", f"127.0.0.1:{port}",
        *security.server_flags(),
    ]  # fmt: skip


def _serving_lines(log_path: Path) -> int:
    return log_path.read_text().count("serving tally.v1.Monitor") if log_path.exists() else 0


async def _start_monitor(command: list[str], log_path: Path) -> asyncio.subprocess.Process:
    """A `tally monitor` process, returned once it serves (it has loaded its checkpoint)."""
    before = _serving_lines(log_path)
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=log)
    deadline = time.monotonic() + WAIT_S
    while _serving_lines(log_path) == before:
        assert process.returncode is None and time.monotonic() < deadline, _text(log_path)
        await asyncio.sleep(0.05)
    return process


def _text(log_path: Path) -> str:
    return log_path.read_text() if log_path.exists() else ""


async def _profile_of_process(port: int, key: str) -> mpb.FlowProfile:
    async with aio_channel(f"127.0.0.1:{port}", security.admin()) as channel:
        return await mpb_grpc.MonitorStub(channel).GetFlowProfile(
            mpb.GetFlowProfileRequest(partition_key=key), timeout=10
        )


async def test_kill_9_of_the_monitor_process_under_load_loses_and_doubles_nothing(
    cluster: InProcessCluster, broker: Broker, tmp_path: Path
) -> None:
    rng = random.Random(5)
    keys = _customers(2)
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(RULES)
    port = free_port()
    command = _monitor_command(broker, tmp_path / "cp.json", rules_path, port)
    log_path = tmp_path / "monitor.log"
    async with security.channel(cluster.target) as channel:
        client = Client(channel)
        await _open_books(client, keys)
        async with _relaying(cluster, broker):

            async def load() -> None:
                for month in (6, 7, 8):
                    await _a_month(client, keys, month, seed=month)

            posting = asyncio.create_task(load())
            kills = 0
            while not posting.done() or kills < 3:
                monitor = await _start_monitor(command, log_path)
                await asyncio.sleep(rng.uniform(0.2, 1.2))  # at any point of its work
                monitor.send_signal(signal.SIGKILL)
                await monitor.wait()
                kills += 1
            await posting
            monitor = await _start_monitor(command, log_path)
            try:
                replayed, made = await _replayed(broker)
                heads = await _heads(cluster)
                assert replayed.positions == heads
                deadline = time.monotonic() + WAIT_S
                while True:
                    answer = await _profile_of_process(port, keys[0])
                    if answer.stream_sequence == replayed.stream_sequence:
                        break
                    assert time.monotonic() < deadline, "the monitor did not catch up"
                    await asyncio.sleep(0.2)
                for key in keys:
                    answer = await _profile_of_process(port, key)
                    as_of = end_of_day_ns(replayed.engine.day or 0)
                    profile = replayed.engine.profile(key, as_of)
                    assert profile is not None
                    expected = convert.profile_to_proto(
                        profile, replayed.engine.active_alerts(key), replayed.stream_sequence
                    )
                    assert answer == expected, key
                assert made and await _alerts(broker) == made  # each alert once, none lost
            finally:
                monitor.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(monitor.wait(), timeout=WAIT_S)
    assert code == 0, _text(log_path)
    assert kills >= 3
