"""The audit server never hands out a DSN secret: its answers (every RPC's targets and errors)
name each shard's database redacted, in the URL and the keyword form, and `tally audit-serve`
as a process shows no password in its command line or its log. (Over TLS: its flags name the
credentials' files, never a key.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shards.audit.server import AuditServer, AuditServiceConfig
from shards.local import supervisor
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import audit_pb2 as apb
from tally.v1 import audit_pb2_grpc as apb_grpc
from tests.support import security
from tests.support.helpers import NodeHandle
from tests.support.paths import REPO_ROOT
from tests.support.processes import proc_file

TIMEOUT_S = 60.0
# Markers of the made-up passwords below: no answer or log line may hold them.
KEYWORD_PASSWORD = "'Zqkw s\\'Zqecret'"  # as written in the DSN: quoted, an escaped quote
QUERY_PASSWORD = "Zqquery-wrong"


def _shard_dsns(pg: EmbeddedPostgres, real: str) -> list[str]:
    """Shard 0: the real database (URL, with the embedded server's password); shard 1: a
    keyword-form DSN with a password; shard 2: a URL with a wrong ?password=."""
    database = real.rsplit("/", 1)[1]
    host, port = pg.config.host, pg.config.port
    keyword = f"host={host} port={port} user=postgres password={KEYWORD_PASSWORD} dbname={database}"
    query = (
        f"postgresql://postgres@{host}:{port}/{database}?sslmode=disable&password={QUERY_PASSWORD}"
    )
    return [real, keyword, query]


def _expected_targets(pg: EmbeddedPostgres, real: str) -> list[str]:
    database = real.rsplit("/", 1)[1]
    host, port = pg.config.host, pg.config.port
    return [
        f"postgresql://postgres@{host}:{port}/{database}",
        f"host={host} port={port} user=postgres dbname={database}",
        f"postgresql://postgres@{host}:{port}/{database}?sslmode=disable",
    ]


def _assert_no_secret(text: str, pg: EmbeddedPostgres) -> None:
    assert pg.password not in text
    assert "Zq" not in text, text  # neither made-up password, nor a piece of one


@contextlib.asynccontextmanager
async def serving(dsns: list[str]) -> AsyncIterator[apb_grpc.AuditStub]:
    config = AuditServiceConfig(
        dsns=tuple(dsns), listen="127.0.0.1:0", security=security.server_security()
    )
    server = AuditServer(config)
    port = await server.start()
    task = asyncio.create_task(server.run())
    try:
        async with security.channel(f"127.0.0.1:{port}") as channel:
            yield apb_grpc.AuditStub(channel)
    finally:
        server.request_stop()
        await asyncio.wait_for(task, timeout=30)


async def test_every_answer_names_the_shards_redacted(
    pg: EmbeddedPostgres, node: NodeHandle, caplog: pytest.LogCaptureFixture
) -> None:
    dsns = _shard_dsns(pg, node.dsn)
    targets = _expected_targets(pg, node.dsn)
    with caplog.at_level(logging.WARNING):
        async with serving(dsns) as stub:
            report = await stub.RunAudit(apb.RunAuditRequest(), timeout=TIMEOUT_S)
            events = [e async for e in stub.StreamAudit(apb.RunAuditRequest(), timeout=TIMEOUT_S)]
            chain = await stub.VerifyChain(apb.VerifyChainRequest(), timeout=TIMEOUT_S)
            balances = await stub.TrialBalance(apb.TrialBalanceRequest(), timeout=TIMEOUT_S)
    # The real shard is read (its password works); the other two are reported, not read.
    assert [s.ok for s in report.shards] == [True, False, False]
    assert "cannot connect" in report.shards[1].error and report.shards[2].error
    assert "password authentication failed" in report.shards[2].error
    assert [s.target for s in report.shards] == targets
    assert [s.target for s in events[-1].report.shards] == targets
    assert [s.target for s in chain.shards] == targets
    assert [s.target for s in balances.shards] == targets
    assert chain.shards[0].ok and chain.shards[1].error and chain.shards[2].error
    assert balances.shards[1].error and balances.shards[2].error
    for answer in (report, *events, chain, balances):
        _assert_no_secret(str(answer), pg)
        assert pg.password.encode() not in answer.SerializeToString()
    # Its start-up probe warned about the two it cannot read, redacted.
    warned = [r.getMessage() for r in caplog.records if "cannot be read yet" in r.getMessage()]
    assert len(warned) == 2 and targets[1] in warned[0]
    for message in warned:
        _assert_no_secret(message, pg)


async def test_audit_serve_takes_its_dsns_from_the_environment_and_logs_no_secret(
    pg: EmbeddedPostgres, node: NodeHandle, tmp_path: Path
) -> None:
    dsns = _shard_dsns(pg, node.dsn)
    log_path = tmp_path / "audit-serve.log"
    child = await supervisor.start(
        [
            "audit-serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            *security.server_flags(),
        ],
        log_path,
        name="audit-serve",
        environment=supervisor.dsn_environment(audit_dsns=dsns),
        cwd=REPO_ROOT,
        serving_prefixes=(supervisor.AUDIT_SERVING_PREFIX,),
        serving_timeout_s=30,
    )
    try:
        command_line = proc_file(child.pid, "cmdline").decode(errors="replace")
        _assert_no_secret(command_line, pg)
        assert "PRIVATE KEY" not in command_line and "--tls-key=" in command_line
        async with security.channel(child.endpoint) as channel:
            report = await apb_grpc.AuditStub(channel).RunAudit(
                apb.RunAuditRequest(), timeout=TIMEOUT_S
            )
        assert [s.ok for s in report.shards] == [True, False, False]
        assert [s.target for s in report.shards] == _expected_targets(pg, node.dsn)
        _assert_no_secret(str(report), pg)
        assert await child.stop(timeout_s=30, signum=signal.SIGTERM) == 0
    finally:
        await child.close()
    log = log_path.read_text()
    assert log.count("cannot be read yet") == 2, log
    _assert_no_secret(log + "\n".join(child.stdout_lines), pg)
    assert "PRIVATE KEY" not in log
