"""The monitor's /metrics while its books change. Found by the lending bench (bench/lending),
whose scrapes during posting got HTTP 500 from a collector reading the engine's dicts on the
metrics server's thread mid-change ("dictionary changed size during iteration"); its metrics
are now served on the event loop (shards.rpc.metrics.LoopMetricsServer), between blocks. The
scrapes come from another process, as Prometheus's do."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.flows import rules
from core.flows.model import NS_PER_DAY, AccountInfo, Flow, day_of_date
from core.model import Leg
from shards.local.embedded_pg import free_port
from shards.monitor.consumer import MonitorConfig
from shards.monitor.server import MonitorServer, MonitorServerConfig
from tests.support import security
from tests.support.metrics import metrics_text_from_another_process, parse_samples

BORROWER_COUNT = 200
DAY = day_of_date("2026-03-01")


def _loan(key: str) -> AccountInfo:
    metadata = (
        ("loan.first_due", "2026-03-15"), ("loan.installment", "5000"),
        ("loan.installments", "12"), ("loan.kind", "loan"),
    )  # fmt: skip
    return AccountInfo(f"{key}/loan", "USD", 200, metadata)


def _sale(key: str, number: int, day: int) -> Flow:
    legs = (
        Leg(f"c-{number % 50}/dep", True, 1_000 + number % 7, "USD"),
        Leg(f"{key}/dep", False, 1_000 + number % 7, "USD"),
    )
    return Flow(f"{key}/sale-{number}", day * NS_PER_DAY, 1, (), legs)


async def test_scrapes_while_the_books_change_all_answer(tmp_path: Path) -> None:
    config = MonitorServerConfig(
        consumer=MonitorConfig(
            nats_url=f"nats://127.0.0.1:{free_port()}", nats_tls=None,
            checkpoint_path=tmp_path / "checkpoint.json",
        ),
        rule_set=rules.parse_rules("[default]\ncoverage_below = 1.0\n"),
        security=security.server_security(),
        metrics_listen="127.0.0.1:0",
    )  # fmt: skip
    server = MonitorServer(config)
    await server.start()
    # The consumer is not run (no broker): nothing but this test changes the books.
    engine = server.consumer.books.engine
    for n in range(BORROWER_COUNT):
        engine.add_account(_loan(f"b-{n}"))
    changing = True

    async def change() -> None:
        """What applying blocks does to the engine, on the loop, with awaits between."""
        number = 0
        while changing:
            for _ in range(50):
                number += 1
                key = f"b-{number % BORROWER_COUNT}"
                # A new day every round: borrowers' days are added (and, past the retention,
                # dropped) while a scrape may be reading them.
                engine.add_flow(_sale(key, number, DAY + number // 50))
            await asyncio.sleep(0)

    writer = asyncio.create_task(change())
    failures = []
    try:
        for _ in range(10):
            try:
                text = await metrics_text_from_another_process(server.metrics_port)
            except AssertionError as error:
                failures.append(str(error))
                continue
            borrowers = parse_samples(text)[("tally_monitor_borrowers", frozenset())]
            assert borrowers >= BORROWER_COUNT
    finally:
        changing = False
        await writer
        server.request_stop()
        await asyncio.wait_for(server.run(), timeout=30)  # stops at once: the servers too
    assert failures == []
