"""The read-only tally.v1.Audit gRPC service, run as `tally audit-serve`.

A process apart from nodes and gateways: it reads the shard databases directly (shard k is the
k-th --dsn), through read-only sessions (core.audit.connect), and runs core.audit's checks,
the same code as `tally audit`, turning its structured findings into protobuf messages here (no
_pb2 past this module). Auditors run it with a database role that can only SELECT.

Requests are validated first (INVALID_ARGUMENT naming the field); an audit is heavy, so at most
audit_concurrency_max run at once (RESOURCE_EXHAUSTED beyond). Request bodies are parsed here,
so a body that is not a valid message is INVALID_ARGUMENT too, never UNKNOWN.

No answer or log line holds a DSN secret: each shard is named by its DSN redacted (core.dsn:
the URL form's password and ?password=, the keyword form's password=...), and an error met
reading a shard is scrubbed of its DSN's secrets. Give the DSNs in TALLY_AUDIT_DSNS rather than
--dsn flags, which every local user can read in the process list.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from core import audit, limits, signing
from core import dsn as dsn_text
from core.audit import AuditConfig, AuditReport, Finding
from core.audit.report import (
    Balance,
    CheckResult,
    CrossShardSummary,
    ShardSummary,
    StructuredReport,
    balances,
    check_number,
    shard_summary,
    structured,
)
from core.currencies import minor_unit_scale
from core.store.audit import PROBE_SQL
from shards.audit.arguments import DSN_ENV, SERVE_COMMAND, SERVE_DEFAULT_LISTEN
from shards.rpc.metrics import MetricsServer, RpcMetrics
from shards.rpc.serving import grpc_server, run_announced
from shards.security import flags as security_flags
from shards.security import guard
from shards.security.credentials import SecurityConfigError, ServerSecurity
from tally.v1 import audit_pb2 as apb

log = logging.getLogger("tally.audit_service")

SERVICE_NAME: Final = apb.DESCRIPTOR.services_by_name["Audit"].full_name
# Request limits (documented in proto/tally/v1/audit.proto).
FINDING_COUNT_DEFAULT: Final = 1_000
FINDING_COUNT_MAX: Final = 10_000
RESPONSE_FINDING_COUNT_MAX: Final = 20_000
ANCHOR_COUNT_MAX: Final = 1_000
CURRENCY_COUNT_MAX: Final = 200
MESSAGE_BYTES_MAX: Final = 64 << 20
PROGRESS_INTERVAL_S: Final = 0.2
PROBE_TIMEOUT_S: Final = 5.0

Context = Any  # grpc.aio.ServicerContext
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AuditServiceConfig:
    dsns: tuple[str, ...]
    listen: str = SERVE_DEFAULT_LISTEN
    # Audits and chain verifications running at once in this process.
    audit_concurrency_max: int = 2
    # RPCs of any kind (health, reflection, reads) the listener serves at once; beyond,
    # RESOURCE_EXHAUSTED before any handler runs.
    rpc_concurrency_max: int = limits.rpc_concurrency_max_default
    shutdown_grace_s: float = 5.0
    # Prometheus /metrics on its own port ("": off; port 0: any free one).
    metrics_listen: str = ""
    # The audit's own settings (timeouts, cursor chunk, ...); requests set the rest.
    audit: AuditConfig = field(default_factory=AuditConfig)
    # TLS and who may call (role auditor): required, the server refuses to start without it.
    security: ServerSecurity | None = None


class BadRequest(Exception):
    """A request field is invalid; the message names it."""


# ---- requests ----


def parse_shards(values: Sequence[int], shard_count: int, name: str = "shards") -> list[int]:
    """The chosen shards in order (every shard when none is named)."""
    seen: set[int] = set()
    for index, shard in enumerate(values):
        if shard >= shard_count:
            raise BadRequest(
                f"{name}[{index}]: shard {shard} does not exist (this server audits shards "
                f"0..{shard_count - 1})"
            )
        if shard in seen:
            raise BadRequest(f"{name}[{index}]: shard {shard} is listed twice")
        seen.add(shard)
    return sorted(seen) if seen else list(range(shard_count))


def parse_currencies(values: Sequence[str], name: str = "currencies") -> frozenset[str]:
    if len(values) > CURRENCY_COUNT_MAX:
        raise BadRequest(f"{name}: {len(values)} given, at most {CURRENCY_COUNT_MAX}")
    for index, currency in enumerate(values):
        if currency not in minor_unit_scale:
            raise BadRequest(
                f"{name}[{index}]: {currency[:16]!r} is not an ISO 4217 currency code Tally knows"
            )
    return frozenset(values)


def parse_anchors(values: Sequence[Any], shard_count: int) -> tuple[audit.Anchor, ...]:
    if len(values) > ANCHOR_COUNT_MAX:
        raise BadRequest(f"anchors: {len(values)} given, at most {ANCHOR_COUNT_MAX}")
    anchors = []
    for index, anchor in enumerate(values):
        where = f"anchors[{index}]"
        if anchor.shard >= shard_count:
            raise BadRequest(
                f"{where}.shard: shard {anchor.shard} does not exist (0..{shard_count - 1})"
            )
        if anchor.block < 1:
            raise BadRequest(f"{where}.block: must be 1 or more")
        text = anchor.hash_hex
        if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise BadRequest(f"{where}.hash_hex: must be 64 hexadecimal digits")
        anchors.append(audit.Anchor(anchor.shard, anchor.block, text.lower()))
    return tuple(anchors)


def parse_finding_count_max(value: int) -> int:
    if value > FINDING_COUNT_MAX:
        raise BadRequest(f"finding_count_max: {value}, at most {FINDING_COUNT_MAX}")
    return value or FINDING_COUNT_DEFAULT


def parse_run_request(
    request: apb.RunAuditRequest, base: AuditConfig, shard_count: int
) -> tuple[AuditConfig, list[int]]:
    """The audit's configuration and shards, from a RunAuditRequest (BadRequest if invalid)."""
    shards = parse_shards(request.shards, shard_count)
    grace_s = base.hold_grace_s
    if request.HasField("hold_grace_seconds"):
        grace_s = request.hold_grace_seconds
        if not math.isfinite(grace_s) or grace_s < 0:
            raise BadRequest("hold_grace_seconds: must be a finite number of seconds, 0 or more")
    config = replace(
        base,
        currencies=parse_currencies(request.currencies),
        anchors=parse_anchors(request.anchors, shard_count),
        hold_grace_s=grace_s,
        problem_count_max=parse_finding_count_max(request.finding_count_max),
    )
    return config, shards


# ---- reports as messages ----


def finding_to_proto(finding: Finding) -> apb.Finding:
    return apb.Finding(
        kind=int(finding.kind),
        check=check_number(finding.check),
        shard=finding.shard,
        about=str(finding.about),
        block=finding.block,
        block_last=finding.block_last,
        transaction_id=finding.transaction_id,
        posting_sequence=finding.posting,
        account_id=finding.account_id,
        currency=finding.currency,
        expected=finding.expected,
        found=finding.found,
        message=finding.message,
        text=str(finding),
        move_id=finding.move_id,
    )


def balances_to_proto(balances: Sequence[Balance]) -> list[apb.CurrencyBalance]:
    return [
        apb.CurrencyBalance(
            currency=balance.currency,
            debits_posted=str(balance.debits_posted),
            credits_posted=str(balance.credits_posted),
            debits_pending=str(balance.debits_pending),
            credits_pending=str(balance.credits_pending),
            balanced=balance.balanced,
        )
        for balance in balances
    ]


def _findings(findings: Sequence[Finding]) -> tuple[list[apb.Finding], bool]:
    kept = findings[:RESPONSE_FINDING_COUNT_MAX]
    return [finding_to_proto(f) for f in kept], len(findings) > len(kept)


def _checks(checks: Sequence[CheckResult]) -> list[apb.CheckResult]:
    return [apb.CheckResult(check=c.number, finding_count=c.finding_count) for c in checks]


def _shard_to_proto(shard: ShardSummary) -> apb.ShardAudit:
    return apb.ShardAudit(
        shard=shard.shard,
        target=shard.target,
        ok=shard.ok,
        error=shard.error,
        duration_seconds=shard.duration_s,
        block_count=shard.block_count,
        transaction_count=shard.transaction_count,
        posting_count=shard.posting_count,
        account_count=shard.account_count,
        hold_count=shard.hold_count,
        head_block=shard.head_block,
        head_hash=shard.head_hash,
        checks=_checks(shard.checks),
        trial_balance=balances_to_proto(shard.trial_balance),
        cross_shard_count=shard.cross_shard_count,
    )


def _cross_shard_to_proto(cross: CrossShardSummary) -> apb.CrossShard:
    return apb.CrossShard(
        checked=cross.checked,
        reason=cross.reason,
        settled_count=cross.settled_count,
        in_flight_count=cross.in_flight_count,
        rechecked_count=cross.rechecked_count,
        open_hold_count=cross.open_hold_count,
        in_flight=[
            apb.InFlightTransaction(
                transaction_id=flight.transaction_id,
                attempt_key=flight.key,
                decision=flight.decision,
                coordinator_shard=flight.coordinator,
                pieces=[apb.PieceState(shard=s, state=state) for s, state in flight.pieces],
                deadline_ns=flight.deadline_ns,
            )
            for flight in cross.in_flight
        ],
    )


def report_to_proto(report: StructuredReport) -> apb.AuditReport:
    findings, truncated = _findings(report.findings)
    return apb.AuditReport(
        ok=report.ok,
        complete=report.complete,
        started_at_ns=report.started_at_ns,
        duration_seconds=report.duration_s,
        shards=[_shard_to_proto(shard) for shard in report.shards],
        trial_balance=balances_to_proto(report.trial_balance),
        cross_shard=_cross_shard_to_proto(report.cross_shard),
        findings=findings,
        finding_count=report.finding_count,
        findings_truncated=truncated,
    )


# ---- the servicer ----


class AuditService:
    def __init__(self, config: AuditServiceConfig) -> None:
        self._config = config
        self._running = 0

    @property
    def shard_count(self) -> int:
        return len(self._config.dsns)

    @contextlib.asynccontextmanager
    async def _slot(self, context: Context) -> AsyncIterator[None]:
        """One of audit_concurrency_max places, or RESOURCE_EXHAUSTED."""
        if self._running >= self._config.audit_concurrency_max:
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._running} audits are running (at most "
                f"{self._config.audit_concurrency_max} at once); retry later",
            )
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1

    async def _run_request(
        self, request: apb.RunAuditRequest, context: Context
    ) -> tuple[AuditConfig, list[int]]:
        try:
            return parse_run_request(request, self._config.audit, self.shard_count)
        except BadRequest as error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))

    async def RunAudit(self, request: apb.RunAuditRequest, context: Context) -> apb.AuditReport:
        config, shards = await self._run_request(request, context)
        async with self._slot(context):
            report = await audit.audit_cluster(self._config.dsns, config, None, shards)
        return report_to_proto(structured(report))

    async def StreamAudit(
        self, request: apb.RunAuditRequest, context: Context
    ) -> AsyncIterator[apb.AuditEvent]:
        config, shards = await self._run_request(request, context)
        async with self._slot(context):
            # Unbounded, but at most one event per shard and phase every PROGRESS_INTERVAL_S.
            queue: asyncio.Queue[apb.AuditProgress | None] = asyncio.Queue()
            last_sent: dict[tuple[int, str], float] = {}

            def progress(shard: int, phase: str, done: int, total: int) -> None:
                now = time.monotonic()
                if done < total and now - last_sent.get((shard, phase), 0.0) < PROGRESS_INTERVAL_S:
                    return
                last_sent[(shard, phase)] = now
                queue.put_nowait(
                    apb.AuditProgress(shard=shard, phase=phase, done=done, total=total)
                )

            async def run() -> AuditReport:
                try:
                    return await audit.audit_cluster(self._config.dsns, config, progress, shards)
                finally:
                    queue.put_nowait(None)

            task = asyncio.create_task(run())
            try:
                while (event := await queue.get()) is not None:
                    yield apb.AuditEvent(progress=event)
                yield apb.AuditEvent(report=report_to_proto(structured(await task)))
            finally:
                if not task.done():  # the client went away: stop reading the shards
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    async def VerifyChain(
        self, request: apb.VerifyChainRequest, context: Context
    ) -> apb.VerifyChainResponse:
        try:
            shards = parse_shards(request.shards, self.shard_count)
            config = replace(
                self._config.audit,
                anchors=parse_anchors(request.anchors, self.shard_count),
                problem_count_max=parse_finding_count_max(request.finding_count_max),
            )
        except BadRequest as error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        async with self._slot(context):
            results = await self._per_shard(
                shards, lambda connection, shard: audit.verify_chain(connection, shard, config)
            )
        response = apb.VerifyChainResponse(ok=True, complete=True)
        found: list[Finding] = []
        for shard, result in results.items():
            if isinstance(result, str):
                response.ok = response.complete = False
                target = audit.redact(self._config.dsns[shard])
                response.shards.append(
                    apb.ChainVerification(shard=shard, target=target, ok=False, error=result)
                )
                continue
            shard_report, _ = result
            summary = shard_summary(shard_report)
            response.ok = response.ok and summary.ok
            response.finding_count += summary.finding_count
            found += summary.findings
            response.shards.append(
                apb.ChainVerification(
                    shard=shard,
                    target=audit.redact(self._config.dsns[shard]),
                    ok=summary.ok,
                    block_count=summary.block_count,
                    posting_count=summary.posting_count,
                    head_block=summary.head_block,
                    head_hash=summary.head_hash,
                )
            )
        findings, response.findings_truncated = _findings(found)
        response.findings.extend(findings)
        return response

    async def TrialBalance(
        self, request: apb.TrialBalanceRequest, context: Context
    ) -> apb.TrialBalanceResponse:
        try:
            shards = parse_shards(request.shards, self.shard_count)
            currencies = parse_currencies(request.currencies)
        except BadRequest as error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))

        async def read(connection: Any, shard: int) -> dict[str, tuple[int, int, int, int]]:
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                return await audit.trial_balance(connection)

        results = await self._per_shard(shards, read)
        response = apb.TrialBalanceResponse(balanced=True)
        total: dict[str, list[int]] = {}
        for shard, result in results.items():
            target = audit.redact(self._config.dsns[shard])
            if isinstance(result, str):
                response.balanced = False
                response.shards.append(apb.ShardBalance(shard=shard, target=target, error=result))
                continue
            chosen = {c: s for c, s in result.items() if not currencies or c in currencies}
            for currency, sums in chosen.items():
                into = total.setdefault(currency, [0, 0, 0, 0])
                for index, value in enumerate(sums):
                    into[index] += value
            messages = balances_to_proto(balances(chosen))
            response.balanced = response.balanced and all(b.balanced for b in messages)
            response.shards.append(apb.ShardBalance(shard=shard, target=target, balances=messages))
        response.cluster.extend(balances_to_proto(balances(total)))
        return response

    async def _per_shard(
        self, shards: Sequence[int], work: Callable[[Any, int], Awaitable[T]]
    ) -> dict[int, T | str]:
        """work(connection, shard) on each shard (at most shard_concurrency_max at once), on
        its own read-only connection: each shard's result, or why it could not be read."""
        config = self._config.audit
        limit = asyncio.Semaphore(config.shard_concurrency_max)

        async def one(shard: int) -> T | str:
            dsn = self._config.dsns[shard]
            async with limit:
                try:
                    connection = await audit.connect(dsn, config)
                except Exception as error:  # unreachable, bad password, no such database
                    return f"cannot connect: {audit.describe_error(dsn, error)}"
                try:
                    return await work(connection, shard)
                except Exception as error:  # not a Tally shard database, a lost connection
                    return f"cannot read: {audit.describe_error(dsn, error, as_repr=True)}"
                finally:
                    await connection.close(timeout=config.connect_timeout_s)

        async with asyncio.TaskGroup() as group:
            tasks = {shard: group.create_task(one(shard)) for shard in shards}
        return {shard: task.result() for shard, task in tasks.items()}


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


def audit_handler(
    service: AuditService, metrics: RpcMetrics | None = None
) -> grpc.GenericRpcHandler:
    """tally.v1.Audit handlers that parse requests themselves: a body that is not a valid
    message is INVALID_ARGUMENT (gRPC's own deserialisation would answer UNKNOWN). With
    metrics, the unary RPCs are timed and counted by status."""
    descriptor = apb.DESCRIPTOR.services_by_name["Audit"]
    handlers = {}
    for method in descriptor.methods:
        request_type = getattr(apb, method.input_type.name)
        response_type = getattr(apb, method.output_type.name)
        implementation = getattr(service, method.name)
        if metrics is not None and not method.server_streaming:
            implementation = metrics.wrap(method, implementation)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _parsing_stream(implementation, request_type),
                response_serializer=response_type.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _parsing(implementation, request_type),
                response_serializer=response_type.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


async def _parse(body: bytes, request_type: Any, context: Context) -> Any:
    try:
        return request_type.FromString(body)
    except DecodeError as error:
        await _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {request_type.DESCRIPTOR.full_name}: {error}",
        )


def _parsing(method: Any, request_type: Any) -> Any:
    async def handle(body: bytes, context: Context) -> Any:
        return await method(await _parse(body, request_type, context), context)

    return handle


def _parsing_stream(method: Any, request_type: Any) -> Any:
    async def handle(body: bytes, context: Context) -> AsyncIterator[Any]:
        async for event in method(await _parse(body, request_type, context), context):
            yield event

    return handle


# ---- the server ----


class AuditServer:
    def __init__(self, config: AuditServiceConfig) -> None:
        if not config.dsns:
            raise ValueError("the audit server needs at least one shard database")
        if config.security is None:
            raise SecurityConfigError(
                "every listener is TLS: the audit server needs its certificate, key and CA "
                "(--tls-cert, --tls-key, --tls-ca)"
            )
        self.config = config
        self.service = AuditService(config)
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stopping = asyncio.Event()
        self.port = 0
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = RpcMetrics(self.registry, {}, prefix="tally_audit_")
        denials = guard.denials_counter(self.registry, "tally_audit_")
        self._guard = guard.Guard(config.security, guard.CLIENT, denials)
        self._metrics_server: MetricsServer | None = None
        self.metrics_port = 0

    async def connect(self, shard: int) -> Any:
        """A session as the service reads shard `shard` through (read-only)."""
        return await audit.connect(self.config.dsns[shard], self.config.audit)

    async def start(self) -> int:
        await self._probe()
        options = [
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_receive_message_length", 4 << 20),
        ]
        self._server = grpc_server(
            [self._guard.interceptor()], options, self.config.rpc_concurrency_max
        )
        self._server.add_generic_rpc_handlers((audit_handler(self.service, self.metrics),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = self._server.add_secure_port(
            self.config.listen, self._guard.server_credentials()
        )
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await self._server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await self._health.set("", serving)
        await self._health.set(SERVICE_NAME, serving)
        if self.config.metrics_listen:
            self._metrics_server = MetricsServer(self.registry, self.config.metrics_listen)
            self.metrics_port = self._metrics_server.start()
        return self.port

    async def _probe(self) -> None:
        """Say early which shard databases cannot be read (not fatal: a cluster's nodes may
        still be creating their schemas; every request reports its unreadable shards)."""
        for shard, dsn in enumerate(self.config.dsns):
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    connection = await self.connect(shard)
                    try:
                        await connection.fetchval(PROBE_SQL)
                    finally:
                        await connection.close()
            except Exception as error:
                why = audit.describe_error(dsn, error, as_repr=True)
                log.warning("shard %d (%s) cannot be read yet: %s", shard, audit.redact(dsn), why)

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            await self._stopping.wait()
        finally:
            await self._health.enter_graceful_shutdown()
            if self._server is not None:
                await self._server.stop(self.config.shutdown_grace_s)
            if self._metrics_server is not None:
                await self._metrics_server.stop()


# ---- the command ----


def dsns_of(args: argparse.Namespace) -> list[str]:
    """The shard databases, in shard order: --dsn's, or else TALLY_AUDIT_DSNS's (read when the
    command runs, so a DSN never sits in the parser's defaults)."""
    dsns = list(args.dsn or [])
    if not dsns:
        dsns = dsn_text.split_list(os.environ.get(DSN_ENV, ""))
    return dsns


def run(args: argparse.Namespace) -> int:
    dsns = dsns_of(args)
    if not dsns:
        print(f"tally {SERVE_COMMAND}: no shard database: pass --dsn or set {DSN_ENV}", flush=True)
        return 2
    import uvloop

    try:
        security = security_flags.server_security(args)
        keys = tuple(signing.load_public(Path(path).read_bytes(), path) for path in args.verify_key)
    except (SecurityConfigError, ValueError, OSError) as error:
        print(f"tally {SERVE_COMMAND}: {error}", flush=True)
        return 2
    config = AuditServiceConfig(
        dsns=tuple(dsns),
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        audit=AuditConfig(verify_keys=keys, segments_root=args.segments),
        security=security,
        rpc_concurrency_max=args.rpc_concurrency_max,
    )
    code: int = uvloop.run(serve(config))
    return code


async def serve(config: AuditServiceConfig) -> int:
    server = AuditServer(config)
    try:
        port = await server.start()
    except OSError as error:
        print(f"tally {SERVE_COMMAND}: {error}", flush=True)
        return 2
    return await run_announced(
        server, SERVICE_NAME, config.listen, port, config.metrics_listen, server.metrics_port
    )
