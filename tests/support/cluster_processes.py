"""A cluster of real processes for crash tests: one database per shard plus the control database
on the session's embedded PostgreSQL, `tally node` per shard and `tally gateway`, each its own
`python -m shards.cli` process, killable with SIGKILL and restartable on the same ports.
Every process serves TLS with the tests' cluster certificate (spawn_cli gives it the flags);
each node's internal listener (tally.v1.Shard) is on a port of its own, chosen here and kept
across restarts, so the endpoint it registers in the control database does not change.

Every wait is bounded; `process_cluster` kills every process it started, whatever happens.
Per-process environment (failpoints, the prepare deadline) is given at each (re)start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc

from core.slots import SlotMap, is_spread
from core.store import control as control_store
from shards import control
from shards.local import supervisor
from shards.local.embedded_pg import EmbeddedPostgres, free_port
from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import Client
from tests.support.processes import (
    SERVING,
    NodeProcess,
    fetch_rows,
    spawn_cli,
    start_on_a_free_port,
    wait_health,
)

SHARD_COUNT = 4
LOG_TAIL_BYTES = 3000
_cluster_numbers = itertools.count(1)


def log_text(child: NodeProcess) -> str:
    with contextlib.suppress(OSError):
        return child.log_path.read_bytes().decode(errors="replace")
    return ""


async def wait_log(child: NodeProcess, text: str, timeout_s: float = 20.0) -> None:
    """Until the process's log contains `text` (say, a failpoint it reached)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log_text(child):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{text!r} not logged within {timeout_s}s: {child.describe()}")


@dataclass
class ProcessCluster:
    control_dsn: str
    shard_dsns: list[str]
    log_dir: Path
    name: str
    slot_map: SlotMap
    node_ports: list[int]
    node_internal_ports: list[int]
    gateway_port: int
    nodes: dict[int, NodeProcess] = field(default_factory=dict)
    gateway: NodeProcess | None = None
    # The gateway's /metrics port (tests/support/metrics.py), chosen at its first start.
    gateway_metrics_port: int = 0
    _starts: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    def node_target(self, shard_id: int) -> str:
        """A node's client listener (tally.v1.Ledger, health)."""
        return f"127.0.0.1:{self.node_ports[shard_id]}"

    def node_internal_target(self, shard_id: int) -> str:
        """A node's internal listener (tally.v1.Shard: security.cluster_channel)."""
        return f"127.0.0.1:{self.node_internal_ports[shard_id]}"

    def shard_of(self, account_id: str) -> int:
        assert not is_spread(account_id)
        return self.slot_map.shard_of_account(account_id)

    def _log_path(self, role: str) -> Path:
        return self.log_dir / f"{self.name}-{role}-{next(self._starts)}.log"

    async def start_node(
        self, shard_id: int, environment: Mapping[str, str] | None = None
    ) -> NodeProcess:
        """Start (or restart, on its ports) a shard's node; wait until it is the writer."""
        assert shard_id not in self.nodes or self.nodes[shard_id].returncode is not None
        databases = supervisor.dsn_environment(
            dsn=self.shard_dsns[shard_id], control_dsn=self.control_dsn
        )
        ports = iter([self.node_internal_ports[shard_id]])

        def arguments() -> list[str]:
            # Should a port have been taken meanwhile, the retry takes other free ones.
            internal = next(ports, 0) or free_port()
            self.node_internal_ports[shard_id] = internal
            return ["node", "--shard-id", str(shard_id), f"--internal-listen=127.0.0.1:{internal}"]

        child = await self._spawn(
            arguments, self.node_ports[shard_id], self.shard_dsns[shard_id], f"node{shard_id}",
            {**databases, **(environment or {})},
        )  # fmt: skip
        self.node_ports[shard_id] = child.port
        assert child.internal_target == self.node_internal_target(shard_id), child.describe()
        self.nodes[shard_id] = child
        await wait_health(child, SERVING)
        return child

    async def add_shard(
        self, pg: EmbeddedPostgres, environment: Mapping[str, str] | None = None
    ) -> int:
        """A shard new to the cluster: its database and its node (owning no slots until some
        move there); its shard id."""
        shard_id = len(self.shard_dsns)
        database = f"{self.name}_s{shard_id}"
        await pg.create_database_async(database)
        self.shard_dsns.append(pg.dsn(database))
        self.node_ports.append(free_port())
        self.node_internal_ports.append(free_port())
        await self.start_node(shard_id, environment)
        return shard_id

    async def start_gateway(self, environment: Mapping[str, str] | None = None) -> NodeProcess:
        assert self.gateway is None or self.gateway.returncode is not None
        databases = supervisor.dsn_environment(control_dsn=self.control_dsn)
        self.gateway_metrics_port = self.gateway_metrics_port or free_port()
        metrics = f"--metrics-listen=127.0.0.1:{self.gateway_metrics_port}"
        self.gateway = await self._spawn(
            lambda: ["gateway", metrics], self.gateway_port, self.control_dsn, "gateway",
            {**databases, **(environment or {})},
        )  # fmt: skip
        self.gateway_port = self.gateway.port
        return self.gateway

    async def _spawn(
        self,
        arguments: Callable[[], Sequence[str]],
        port: int,
        dsn: str,
        role: str,
        environment: Mapping[str, str] | None,
    ) -> NodeProcess:
        """spawn_cli on the port chosen for this process, or on another free one if something
        took it meanwhile (arguments() is asked again at each try). Nodes register their
        internal endpoint in the control database and clients read cluster.target, so a new
        port is found."""
        log_path = self._log_path(role)
        return await start_on_a_free_port(
            lambda on: spawn_cli(arguments(), on, dsn, log_path, environment), port
        )

    async def kill_node(self, shard_id: int) -> None:
        await self.nodes[shard_id].kill()

    async def kill_gateway(self) -> None:
        assert self.gateway is not None
        await self.gateway.kill()

    def children(self) -> list[NodeProcess]:
        return [*self.nodes.values(), *([self.gateway] if self.gateway else [])]

    def describe(self) -> str:
        """Every process's state and log tail, for an assertion message."""
        parts = []
        for child in self.children():
            tail = log_text(child)[-LOG_TAIL_BYTES:]
            parts.append(f"--- {child.log_path.name} (exit {child.returncode})\n{tail}")
        return "\n".join(parts)

    async def close(self) -> None:
        for child in self.children():
            with contextlib.suppress(Exception):
                await child.close()


@contextlib.asynccontextmanager
async def process_cluster(
    pg: EmbeddedPostgres,
    log_dir: Path,
    gateway_environment: Mapping[str, str] | None = None,
    node_environments: Mapping[int, Mapping[str, str]] | None = None,
    shard_count: int = SHARD_COUNT,
) -> AsyncIterator[ProcessCluster]:
    """Fresh databases, `shard_count` node processes and a gateway process; all are killed on
    exit from the block."""
    name = f"pc{os.getpid()}_{next(_cluster_numbers)}"
    databases = [f"{name}_control", *(f"{name}_s{shard_id}" for shard_id in range(shard_count))]
    await asyncio.gather(*(pg.create_database_async(database) for database in databases))
    control_dsn, *shard_dsns = (pg.dsn(database) for database in databases)
    connection = await control.connect(control_dsn)
    try:
        slot_map = await control_store.initialise(connection, shard_count)
    finally:
        await connection.close(timeout=5.0)
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    cluster = ProcessCluster(
        control_dsn,
        shard_dsns,
        log_dir,
        name,
        slot_map,
        [free_port() for _ in range(shard_count)],
        [free_port() for _ in range(shard_count)],
        free_port(),
    )
    environments = node_environments or {}
    try:
        # Every start runs to its end before a failure is raised, so that close() below finds
        # every node that did start (a failure raised at once left the others running).
        started = await asyncio.gather(
            *(cluster.start_node(s, environments.get(s)) for s in range(shard_count)),
            return_exceptions=True,
        )
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        await cluster.start_gateway(gateway_environment)
        yield cluster
    finally:
        await cluster.close()


# ---- reading every shard's database directly ----


async def fetch_each_shard(
    cluster: ProcessCluster, query: str, *arguments: object
) -> list[list[asyncpg.Record]]:
    """The query's rows on every shard database, in shard order."""
    return list(
        await asyncio.gather(*(fetch_rows(dsn, query, *arguments) for dsn in cluster.shard_dsns))
    )


async def pending_anywhere(cluster: ProcessCluster) -> list[str]:
    """Open holds and non-zero pending counters on any shard (empty: nothing is held)."""
    found = []
    for shard_id, dsn in enumerate(cluster.shard_dsns):
        for row in await fetch_rows(dsn, "SELECT transaction_id FROM holds"):
            found.append(f"shard {shard_id}: hold {row['transaction_id']}")
        query = """
            SELECT id, debits_pending, credits_pending FROM accounts
            WHERE debits_pending <> 0 OR credits_pending <> 0
        """
        for row in await fetch_rows(dsn, query):
            found.append(
                f"shard {shard_id}: {row['id']} pending {row['debits_pending']}"
                f"/{row['credits_pending']}"
            )
    return found


async def wait_nothing_pending(cluster: ProcessCluster, timeout_s: float) -> float:
    """Seconds until no shard holds anything; fails after timeout_s."""
    started = time.monotonic()
    left: list[str] = []
    while time.monotonic() - started < timeout_s:
        left = await pending_anywhere(cluster)
        if not left:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"still held after {timeout_s}s: {left[:10]}\n{cluster.describe()}")


async def trial_balance(dsn: str) -> dict[str, tuple[int, int, int, int]]:
    """Per currency: sums of the four counters over every account of one shard."""
    rows = await fetch_rows(
        dsn,
        """
        SELECT currency, sum(debits_posted) AS dp, sum(credits_posted) AS cp,
               sum(debits_pending) AS dq, sum(credits_pending) AS cq
        FROM accounts GROUP BY currency
        """,
    )
    return {r["currency"]: (int(r["dp"]), int(r["cp"]), int(r["dq"]), int(r["cq"])) for r in rows}


async def wait_gateway_reaches_every_shard(
    client: Client, spread_account: str, timeout_s: float = 15.0
) -> float:
    """Until a read through the gateway reaches every shard (a spread account has a piece on
    each); returns the seconds it took. After a node restarts, the gateway's channel to it
    reconnects with gRPC's backoff, so this can take a few seconds."""
    started = time.monotonic()
    request = pb.GetAccountsRequest(ids=[spread_account])
    while True:
        try:
            await client.stub.GetAccounts(request, timeout=5)
            return time.monotonic() - started
        except grpc.aio.AioRpcError:
            if time.monotonic() - started > timeout_s:
                raise
            await asyncio.sleep(0.1)
