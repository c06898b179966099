"""The online path: the scenario through the real pipeline, every part its own process.

`tally up --shards N` (bench/common/local_cluster.py), a NATS JetStream broker
(shards/local/embedded_nats.py) with certificates of `tally up`'s CA (the broker's, the
relay's, the monitor's and a reader's, issued into DATA_DIR/tls: names, no Tally roles),
`tally relay` and `tally monitor` started through the process supervisor. The bench creates
the accounts, posts every payment through the gateway with its value date (one day at a time,
the day's payments in concurrent calls of POST_BATCH_MAX, retried with the same ids until
CREATED or REPLAYED), samples the ledger's and the monitor's positions while it posts, waits
until the monitor has applied every block the ledger committed, then reads the alert stream
(TALLY_ALERTS, with the reader's certificate) and every borrower's profile (GetFlowProfile)
and the portfolio (GetPortfolio).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import grpc
import nats

from bench.common.local_cluster import admin_credentials, start_cluster, stop_cluster
from bench.common.paths import REPO_ROOT
from bench.common.tally_client import MESSAGE_SIZE_OPTIONS, code_name
from bench.lending.scenario import CURRENCY, LOAN_DAY, TRANSFER_CODE, Account, Payment, Scenario
from bench.locust.metrics import parse_samples
from shards.local import supervisor
from shards.local.embedded_nats import RELAY_NAME, EmbeddedNats, EmbeddedNatsConfig
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port
from shards.local.stream import MONITOR_READY_PREFIX as MONITOR_PREFIX
from shards.local.stream import NATS_NAME as BROKER_NAME
from shards.local.stream import RELAY_READY_PREFIX as RELAY_PREFIX
from shards.local.supervisor import TallyProcess
from shards.monitor.command import MONITOR_CERTIFICATE
from shards.rpc.broker import ALERTS_STREAM, JOURNAL_STREAM
from shards.security import directory, flags
from shards.security.credentials import ClientSecurity, aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tally.v1 import monitor_pb2 as mpb
from tally.v1 import monitor_pb2_grpc as mpb_grpc

READER_NAME: Final = "lending-reader"
POST_BATCH_MAX: Final = 500
CALLS_IN_FLIGHT_MAX: Final = 4
CALL_TIMEOUT_S: Final = 60.0
ATTEMPT_COUNT_MAX: Final = 20
SAMPLE_INTERVAL_S: Final = 0.5
CATCH_UP_TIMEOUT_S: Final = 1800.0
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 60.0
DONE: Final = frozenset({"CREATED", "REPLAYED"})
RETRYABLE_ITEM: Final = frozenset({"UNAVAILABLE", "ABORTED", "OUTCOME_UNKNOWN"})
RETRYABLE_CALL: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
     grpc.StatusCode.RESOURCE_EXHAUSTED}
)  # fmt: skip
POSTINGS_APPLIED: Final = "tally_monitor_postings_applied_total"
RESTARTS: Final = "tally_monitor_restarts_total"
REPLAY_ALERTS_STREAM: Final = "TALLY_ALERTS_REPLAY"
REPLAY_ALERTS_PREFIX: Final = "tally.alerts-replay"


class PipelineError(RuntimeError):
    """A part of the pipeline failed or refused what the scenario sent."""


@dataclass
class Pipeline:
    target: str  # the gateway
    shard_count: int
    tls_root: Path
    security: ClientSecurity
    broker: EmbeddedNats
    relay: TallyProcess
    monitor: TallyProcess
    monitor_target: str
    metrics_url: str
    shard_dsns: list[str]
    workdir: Path
    rules_path: Path
    log_dir: Path


@dataclass
class Sample:
    at_s: float  # since the posting phase started
    ledger_postings: int  # postings the shards' journals hold
    ledger_blocks: int
    monitor: dict[str, float]


@dataclass
class OnlineRun:
    samples: list[Sample] = field(default_factory=list)
    posting_started_s: float = 0.0  # monotonic
    posting_s: float = 0.0  # the posting phase's length
    caught_up_s: float = 0.0  # from the posting phase's start until the monitor caught up
    transactions_posted: int = 0
    calls: int = 0
    retried_items: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    alerts: list[mpb.FlowAlert] = field(default_factory=list)
    profiles: dict[str, mpb.FlowProfile] = field(default_factory=dict)
    portfolio: mpb.Portfolio | None = None
    final_monitor: dict[str, float] = field(default_factory=dict)
    # Postings the journals held and the monitor had applied when posting started and ended.
    ledger_postings_at_start: int = 0
    ledger_postings_at_end: int = 0
    monitor_postings_at_start: int = 0
    monitor_postings_at_end: int = 0
    lag_messages_at_end: int = 0
    scrape_failures: list[str] = field(default_factory=list)  # when, and what went wrong
    replay: Replay | None = None
    restarts: int = 0  # the first monitor's, at the very end
    journal_postings: int = 0
    journal_blocks: int = 0


# ---- starting and stopping the processes ----


def _issue_broker_certificates(root: Path) -> None:
    """Names only: Go's x509 parser refuses Tally's grant extension (embedded_nats.py)."""
    directory.issue_certificate(root, BROKER_NAME, (), (), ("127.0.0.1",))
    for name in (RELAY_NAME, MONITOR_CERTIFICATE, READER_NAME):
        directory.issue_certificate(root, name, (), ())


def _nats_flags(root: Path, name: str) -> list[str]:
    paths = directory.Paths(root)
    return [
        f"--nats-ca={paths.certificate(directory.CA)}",
        f"--nats-cert={paths.certificate(name)}",
        f"--nats-key={paths.key(name)}",
    ]


def broker_tls(root: Path, name: str) -> ssl.SSLContext:
    paths = directory.Paths(root)
    context = ssl.create_default_context(cafile=str(paths.certificate(directory.CA)))
    context.load_cert_chain(paths.certificate(name), paths.key(name))
    return context


@contextlib.asynccontextmanager
async def running(
    workdir: Path, shard_count: int, rules_path: Path, log_dir: Path
) -> AsyncIterator[Pipeline]:
    """The whole pipeline, stopped in order (monitor, relay, broker, cluster) on the way out."""
    data_dir = workdir / "data"
    port = free_port()
    print(f"lending: tally up --shards {shard_count} in {workdir}", flush=True)
    up = await start_cluster(data_dir, shard_count, port)
    try:
        root = flags.local_directory(data_dir)
        _issue_broker_certificates(root)
        broker = EmbeddedNats(
            EmbeddedNatsConfig(
                data_dir=workdir / "nats", port=free_port(),
                ca_file=directory.Paths(root).certificate(directory.CA),
                certificate_file=directory.Paths(root).certificate(BROKER_NAME),
                key_file=directory.Paths(root).key(BROKER_NAME),
                publishers=(RELAY_NAME, MONITOR_CERTIFICATE), readers=(READER_NAME,),
            )
        )  # fmt: skip
        await broker.start()
        try:
            async with _relay_and_monitor(
                workdir, root, broker, f"127.0.0.1:{port}", rules_path, log_dir
            ) as (relay, monitor, monitor_port, metrics_port):
                yield Pipeline(
                    target=f"127.0.0.1:{port}",
                    shard_count=shard_count,
                    tls_root=root,
                    security=admin_credentials(data_dir).security(),
                    broker=broker,
                    relay=relay,
                    monitor=monitor,
                    monitor_target=f"127.0.0.1:{monitor_port}",
                    metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                    shard_dsns=_shard_dsns(data_dir, shard_count),
                    workdir=workdir,
                    rules_path=rules_path,
                    log_dir=log_dir,
                )
        finally:
            await broker.stop()
    finally:
        await stop_cluster(up)


def _shard_dsns(data_dir: Path, shard_count: int) -> list[str]:
    """The DSNs of `tally up`'s shard databases (its PostgreSQL's password is in its data)."""
    pg_port = int((data_dir / "pg-port").read_text())
    server = EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=data_dir / "pg", port=pg_port))
    return [server.dsn(f"tally_shard_{n}") for n in range(shard_count)]


@contextlib.asynccontextmanager
async def _relay_and_monitor(
    workdir: Path, root: Path, broker: EmbeddedNats, target: str, rules_path: Path, log_dir: Path
) -> AsyncIterator[tuple[TallyProcess, TallyProcess, int, int]]:
    admin = directory.Paths(root)
    client_flags = [
        f"--ca={admin.certificate(directory.CA)}",
        f"--cert={admin.certificate(directory.ADMIN)}",
        f"--key={admin.key(directory.ADMIN)}",
    ]
    relay = await supervisor.start(
        ["relay", "--target", target, "--nats-url", broker.url,
         *_nats_flags(root, RELAY_NAME), *client_flags],
        log_dir / "relay.log", name="tally relay", append=False, cwd=REPO_ROOT,
        serving_prefixes=(RELAY_PREFIX,), serving_timeout_s=START_TIMEOUT_S,
        die_with_parent=True,
    )  # fmt: skip
    try:
        port, metrics_port = free_port(), free_port()
        monitor = await start_monitor(
            root, broker.url, rules_path, workdir / "monitor", log_dir / "monitor.log",
            port, metrics_port,
        )  # fmt: skip
        try:
            yield relay, monitor, port, metrics_port
        finally:
            await _stopped(monitor)
    finally:
        await _stopped(relay)


async def start_monitor(
    root: Path,
    nats_url: str,
    rules_path: Path,
    state_dir: Path,
    log_path: Path,
    port: int,
    metrics_port: int,
    extra_arguments: Sequence[str] = (),
) -> TallyProcess:
    """`tally monitor` with its checkpoint in state_dir, once it serves."""
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    return await supervisor.start(
        ["monitor", "--nats-url", nats_url, *_nats_flags(root, MONITOR_CERTIFICATE),
         "--rules", str(rules_path), "--checkpoint", str(state_dir / "cp.json"),
         "--checkpoint-interval-s", "10", "--listen", f"127.0.0.1:{port}",
         "--metrics-listen", f"127.0.0.1:{metrics_port}", *directory.server_flags(root),
         *extra_arguments],
        log_path, name=f"tally monitor ({state_dir.name})", append=False, cwd=REPO_ROOT,
        serving_prefixes=(MONITOR_PREFIX,), serving_timeout_s=START_TIMEOUT_S,
        die_with_parent=True,
    )  # fmt: skip


async def _stopped(process: TallyProcess) -> None:
    code = await process.stop(STOP_TIMEOUT_S)
    if code != 0:
        print(f"lending: {process.name} exited {code}: {process.log_tail()}", flush=True)


# ---- writing the books ----


def _account_proto(account: Account) -> pb.Account:
    return pb.Account(
        id=account.account_id, currency=CURRENCY, code=account.code,
        metadata=dict(account.metadata),
    )  # fmt: skip


def _payment_proto(payment: Payment, value_date: str) -> pb.Transaction:
    return pb.Transaction(
        id=payment.transaction_id,
        code=TRANSFER_CODE,
        value_date=value_date,
        legs=[
            pb.Leg(account_id=payment.debit_account_id, side=pb.SIDE_DEBIT,
                   amount=payment.amount, currency=CURRENCY),
            pb.Leg(account_id=payment.credit_account_id, side=pb.SIDE_CREDIT,
                   amount=payment.amount, currency=CURRENCY),
        ],
    )  # fmt: skip


class _Poster:
    """Sends items until each is CREATED or REPLAYED; any other answer is a PipelineError."""

    def __init__(self, stub: Any, run: OnlineRun) -> None:
        self._stub = stub
        self._run = run

    async def create_accounts(self, accounts: Sequence[Account]) -> None:
        for start in range(0, len(accounts), POST_BATCH_MAX):
            part = [_account_proto(a) for a in accounts[start : start + POST_BATCH_MAX]]
            await self._until_done(part, self._create)

    async def post_day(self, transactions: list[pb.Transaction]) -> None:
        parts = [
            transactions[start : start + POST_BATCH_MAX]
            for start in range(0, len(transactions), POST_BATCH_MAX)
        ]
        semaphore = asyncio.Semaphore(CALLS_IN_FLIGHT_MAX)

        async def one(part: list[pb.Transaction]) -> None:
            async with semaphore:
                await self._until_done(part, self._post)

        async with asyncio.TaskGroup() as group:
            for part in parts:
                group.create_task(one(part))
        self._run.transactions_posted += len(transactions)

    async def _create(self, items: list[Any]) -> list[Any]:
        request = pb.CreateAccountsRequest(accounts=items)
        return list((await self._stub.CreateAccounts(request, timeout=CALL_TIMEOUT_S)).results)

    async def _post(self, items: list[Any]) -> list[Any]:
        request = pb.PostTransactionsRequest(transactions=items)
        return list((await self._stub.PostTransactions(request, timeout=CALL_TIMEOUT_S)).results)

    async def _until_done(self, items: list[Any], call: Any) -> None:
        """The same items (same ids) again until done: REPLAYED for what landed before."""
        for attempt in range(ATTEMPT_COUNT_MAX):
            if not items:
                return
            self._run.calls += 1
            try:
                results = await call(items)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE_CALL:
                    raise PipelineError(f"{error.code().name}: {error.details()}") from None
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            again = []
            for item, result in zip(items, results, strict=True):
                name = code_name(result.code)
                self._run.codes[name] += 1
                if name in RETRYABLE_ITEM:
                    again.append(item)
                elif name not in DONE:
                    raise PipelineError(f"{item.id}: {name} {result.message}")
            self._run.retried_items += len(again)
            items = again
            if items:
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        if items:
            raise PipelineError(f"{len(items)} items not done after {ATTEMPT_COUNT_MAX} tries")


# ---- watching the positions ----


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5.0) as response:
        text = response.read().decode()
    return {name: value for name, labels, value in parse_samples(text) if not labels}


async def monitor_metrics(pipeline: Pipeline) -> dict[str, float]:
    return await asyncio.to_thread(_scrape, pipeline.metrics_url)


async def journal_heads(connections: list[Any]) -> tuple[int, int]:
    """(postings, blocks) the shards' journals hold: the last block's next posting sequence
    (postings are numbered from 1 per shard) and sequence, summed over the shards."""
    postings = blocks = 0
    for connection in connections:
        row = await connection.fetchrow(
            "SELECT sequence, next_posting_sequence FROM journal_blocks"
            " ORDER BY sequence DESC LIMIT 1",
            timeout=10,
        )
        if row is not None:
            postings += int(row["next_posting_sequence"]) - 1
            blocks += int(row["sequence"])
    return postings, blocks


async def _sample_until(
    pipeline: Pipeline, connections: list[Any], run: OnlineRun, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        # The monitor first: what it applied the journals held already, so lag is never < 0.
        try:
            metrics = await monitor_metrics(pipeline)
        except OSError as error:  # urllib's HTTPError and URLError too: counted, reported
            run.scrape_failures.append(f"{time.monotonic() - run.posting_started_s:.1f}s {error}")
        else:
            postings, blocks = await journal_heads(connections)
            at_s = time.monotonic() - run.posting_started_s
            run.samples.append(Sample(at_s, postings, blocks, metrics))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=SAMPLE_INTERVAL_S)


async def _broker_journal_count(pipeline: Pipeline) -> int:
    client = await _nats(pipeline)
    try:
        info = await client.jetstream().stream_info(JOURNAL_STREAM)
        return int(info.state.last_seq or 0)
    finally:
        await client.close()


async def _nats(pipeline: Pipeline) -> Any:
    return await asyncio.wait_for(
        nats.connect(
            pipeline.broker.url, tls=broker_tls(pipeline.tls_root, READER_NAME),
            connect_timeout=5, max_reconnect_attempts=0, allow_reconnect=False,
        ),
        timeout=15,
    )  # fmt: skip


async def caught_up(pipeline: Pipeline, connections: list[Any]) -> None:
    """Until the broker holds every block the shards committed and the monitor applied them
    all and joined every cross-shard transaction (positions, not time)."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:
        _, blocks = await journal_heads(connections)
        relayed = await _broker_journal_count(pipeline)
        metrics = await monitor_metrics(pipeline)
        applied = int(metrics.get("tally_monitor_stream_sequence", 0))
        pending = int(metrics.get("tally_monitor_pending_joins", 0))
        if relayed == blocks and applied == relayed and pending == 0:
            return
        if time.monotonic() > deadline:
            raise PipelineError(f"not caught up: {blocks} blocks, {relayed} relayed, {applied}")
        if pipeline.monitor.returncode is not None or pipeline.relay.returncode is not None:
            raise PipelineError(f"{pipeline.monitor.describe()}\n{pipeline.relay.describe()}")
        await asyncio.sleep(SAMPLE_INTERVAL_S)


# ---- the run ----


async def run(pipeline: Pipeline, scenario: Scenario) -> OnlineRun:
    result = OnlineRun()
    # The sampler reads on connections of its own: one asyncpg connection runs one query.
    connections = [await asyncpg.connect(dsn, timeout=30) for dsn in pipeline.shard_dsns]
    sampling = [await asyncpg.connect(dsn, timeout=30) for dsn in pipeline.shard_dsns]
    try:
        async with aio_channel(pipeline.target, pipeline.security, MESSAGE_SIZE_OPTIONS) as ch:
            poster = _Poster(pb_grpc.LedgerStub(ch), result)
            await poster.create_accounts(scenario.accounts)
            print(f"lending: {len(scenario.accounts)} accounts; posting", flush=True)
            stop = asyncio.Event()
            result.ledger_postings_at_start, _ = await journal_heads(connections)
            metrics = await monitor_metrics(pipeline)
            result.monitor_postings_at_start = int(metrics.get(POSTINGS_APPLIED, 0))
            result.posting_started_s = time.monotonic()
            sampler = asyncio.create_task(_sample_until(pipeline, sampling, result, stop))
            try:
                await _post_all(poster, scenario)
                result.posting_s = time.monotonic() - result.posting_started_s
                await _note_posting_end(pipeline, connections, result)
                print(f"lending: posted in {result.posting_s:.1f} s; waiting", flush=True)
                await caught_up(pipeline, connections)
                result.caught_up_s = time.monotonic() - result.posting_started_s
            finally:
                stop.set()
                await sampler
        result.journal_postings, result.journal_blocks = await journal_heads(connections)
    finally:
        for connection in connections + sampling:
            await connection.close()
    result.final_monitor = await monitor_metrics(pipeline)
    result.alerts = await read_alerts(pipeline)
    await _read_profiles(pipeline, scenario, result)
    result.replay = await replay(pipeline, result.alerts, result.scrape_failures)
    # The first monitor, idle meanwhile: its restarts over the whole run.
    result.restarts = int((await monitor_metrics(pipeline)).get(RESTARTS, 0))
    return result


async def _note_posting_end(pipeline: Pipeline, connections: list[Any], run: OnlineRun) -> None:
    metrics = await monitor_metrics(pipeline)
    run.ledger_postings_at_end, _ = await journal_heads(connections)
    run.monitor_postings_at_end = int(metrics.get(POSTINGS_APPLIED, 0))
    run.lag_messages_at_end = int(metrics.get("tally_monitor_lag_messages", 0))


async def _post_all(poster: _Poster, scenario: Scenario) -> None:
    for offset, payments in enumerate(scenario.payments_by_day):
        if offset == LOAN_DAY:
            await poster.create_accounts(scenario.loan_accounts)
        value_date = scenario.value_date(offset)
        await poster.post_day([_payment_proto(p, value_date) for p in payments])
        if offset % 30 == 0:
            print(f"lending: day {offset} ({value_date}) posted", flush=True)


async def read_alerts(pipeline: Pipeline, stream: str = ALERTS_STREAM) -> list[mpb.FlowAlert]:
    """Every message of an alert stream, in stream order."""
    client = await _nats(pipeline)
    try:
        js = client.jetstream()
        info = await js.stream_info(stream)
        found = []
        for sequence in range(int(info.state.first_seq or 1), int(info.state.last_seq or 0) + 1):
            message = await js.get_msg(stream, sequence)
            found.append(mpb.FlowAlert.FromString(message.data or b""))
        return found
    finally:
        await client.close()


async def _read_profiles(pipeline: Pipeline, scenario: Scenario, result: OnlineRun) -> None:
    async with aio_channel(pipeline.monitor_target, pipeline.security) as channel:
        stub = mpb_grpc.MonitorStub(channel)
        for borrower in scenario.borrowers:
            request = mpb.GetFlowProfileRequest(partition_key=borrower.key)
            result.profiles[borrower.key] = await stub.GetFlowProfile(request, timeout=30)
        result.portfolio = await stub.GetPortfolio(mpb.GetPortfolioRequest(), timeout=30)


# ---- the monitor's own pace ----


@dataclass
class Replay:
    """A second monitor, fresh, reading the whole journal stream the broker holds once the
    ledger is idle: how fast the monitor consumes when it is not waiting for the ledger."""

    seconds: float
    postings: int
    blocks: int
    postings_per_s: float
    samples: list[tuple[float, int]]  # (seconds since it served, postings applied)
    same_alerts: bool  # its alert stream is the first monitor's, message for message


async def replay(
    pipeline: Pipeline, first_alerts: list[mpb.FlowAlert], failures: list[str]
) -> Replay:
    """Its alerts go to a stream of their own (REPLAY_ALERTS_STREAM): the first monitor's
    stream is left as it was."""
    count = await _broker_journal_count(pipeline)
    port, metrics_port = free_port(), free_port()
    monitor = await start_monitor(
        pipeline.tls_root, pipeline.broker.url, pipeline.rules_path,
        pipeline.workdir / "replay", pipeline.log_dir / "monitor-replay.log", port, metrics_port,
        ("--alerts-stream", REPLAY_ALERTS_STREAM, "--alerts-prefix", REPLAY_ALERTS_PREFIX),
    )  # fmt: skip
    started_s = time.monotonic()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    samples: list[tuple[float, int]] = []
    try:
        while True:
            elapsed_s = time.monotonic() - started_s
            if elapsed_s > CATCH_UP_TIMEOUT_S or monitor.returncode is not None:
                raise PipelineError(f"the replay did not finish: {monitor.describe()}")
            try:
                metrics = await asyncio.to_thread(_scrape, url)
            except OSError as error:  # counted and reported, as during the run
                failures.append(f"replay {elapsed_s:.1f}s {error}")
                continue
            elapsed_s = time.monotonic() - started_s
            samples.append((elapsed_s, int(metrics.get(POSTINGS_APPLIED, 0))))
            done = int(metrics.get("tally_monitor_stream_sequence", 0)) == count
            if done and int(metrics.get("tally_monitor_pending_joins", 0)) == 0:
                break
            await asyncio.sleep(SAMPLE_INTERVAL_S / 5)
        alerts = await read_alerts(pipeline, REPLAY_ALERTS_STREAM)
    finally:
        await _stopped(monitor)
    postings = samples[-1][1]
    return Replay(
        seconds=elapsed_s,
        postings=postings,
        blocks=int(metrics.get("tally_monitor_blocks_applied_total", 0)),
        postings_per_s=postings / max(elapsed_s, 1e-9),
        samples=samples,
        same_alerts=alerts == first_alerts,
    )
