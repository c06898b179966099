"""Clock faults for the cross-shard suites (tests/shards/crossshard/test_clocks.py, test_reask.py):
a clock file per process of a process cluster (shards.failpoints.wall_ns reads the offset in
it, re-read every 0.1 s), the roles each shard plays for a hold, and the checks that a hold's
pieces settled as its coordinator decided."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from core import audit
from core.audit import AuditConfig
from core.model import Kind
from tally.v1 import ledger_pb2 as pb
from tests.support.cluster_processes import ProcessCluster
from tests.support.crossshard_crash import FUNDING, check_clearing_nets_to_zero, held_on
from tests.support.helpers import Client, transfer
from tests.support.processes import fetch_rows

HELD = 400


@dataclass(frozen=True)
class Clocks:
    """One offset file per process: the gateway's and each node's."""

    directory: Path

    def path(self, role: str) -> Path:
        return self.directory / f"clock-{role}"

    def environment(self, role: str) -> dict[str, str]:
        return {"TALLY_FAULT_CLOCK_FILE": str(self.path(role))}

    def set(self, role: str, offset_s: float) -> None:
        """Skew (or step) one process's clock by offset_s from the system's."""
        self.path(role).write_text(str(int(offset_s * 1e9)))

    async def settle(self) -> None:
        """Long enough for every process to have re-read its file (every 0.1 s)."""
        await asyncio.sleep(0.3)


def node_role(shard_id: int) -> str:
    return f"node{shard_id}"


def hold(payer: str, payee: str, transaction_id: str, timeout_seconds: int = 0) -> pb.Transaction:
    return transfer(
        transaction_id, payer, payee, HELD, pending=True, timeout_seconds=timeout_seconds
    )


@dataclass(frozen=True)
class HoldRoles:
    coordinator: int
    participant: int
    piece: str  # the participant's piece id


async def roles_of(cluster: ProcessCluster, hold_id: str) -> HoldRoles:
    """Which shard records the hold (its coordinator) and which holds a piece of it, read from
    the databases (whatever rule chose the coordinator)."""
    coordinator, pieces = -1, []
    for shard_id, dsn in enumerate(cluster.shard_dsns):
        rows = await fetch_rows(
            dsn,
            "SELECT id, kind FROM transactions WHERE id = $1 OR id LIKE '~piece/%/' || $1",
            hold_id,
        )
        for row in rows:
            if row["kind"] == Kind.HOLD:
                coordinator = shard_id
            elif row["kind"] == Kind.PREPARED:
                pieces.append((shard_id, str(row["id"])))
    assert coordinator >= 0 and len(pieces) == 1, (coordinator, pieces)
    return HoldRoles(coordinator, pieces[0][0], pieces[0][1])


async def status_of(cluster: ProcessCluster, shard_id: int, transaction_id: str) -> int:
    rows = await fetch_rows(
        cluster.shard_dsns[shard_id], "SELECT status FROM transactions WHERE id = $1",
        transaction_id,
    )  # fmt: skip
    assert len(rows) == 1, (shard_id, transaction_id, rows)
    return int(rows[0]["status"])


async def piece_deadline_ns(cluster: ProcessCluster, roles: HoldRoles) -> int | None:
    """The participant's deadline for its piece (None: not held)."""
    rows = await fetch_rows(
        cluster.shard_dsns[roles.participant],
        "SELECT expires_at_ns FROM holds WHERE transaction_id = $1",
        roles.piece,
    )
    return int(rows[0]["expires_at_ns"]) if rows else None


async def wait_piece_settled(cluster: ProcessCluster, roles: HoldRoles, timeout_s: float) -> float:
    """Seconds until the participant no longer holds its piece; fails after timeout_s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await piece_deadline_ns(cluster, roles) is None:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    deadline = await piece_deadline_ns(cluster, roles)
    raise AssertionError(
        f"{roles.piece} still held on shard {roles.participant} after {timeout_s}s "
        f"(deadline {deadline})\n{cluster.describe()}"
    )


async def books_are_right(
    cluster: ProcessCluster, client: Client, payer: str, payee: str, posted: int
) -> None:
    """Nothing held anywhere; `posted` moved from payer to payee, exactly; the cluster audit
    clean (every cross-shard transaction all-or-nothing, the clearing pieces netting to zero)."""
    for shard_id in range(len(cluster.shard_dsns)):
        assert await held_on(cluster, shard_id) == set(), shard_id
    payer_balance, payee_balance = await client.balance(payer), await client.balance(payee)
    assert (payer_balance.available, payer_balance.debits_pending) == (FUNDING - posted, 0)
    assert (payee_balance.available, payee_balance.credits_pending) == (FUNDING + posted, 0)
    await check_clearing_nets_to_zero(client)
    await audit_is_clean(cluster)


async def audit_is_clean(cluster: ProcessCluster) -> None:
    report = await audit.audit_cluster(cluster.shard_dsns, AuditConfig())
    problems = [f.message for shard in report.shards for f in shard.findings]
    assert report.ok, problems + [f.message for f in report.cluster_problems]
    assert (report.cross_shard.in_flight_count, report.cross_shard.open_hold_count) == (0, 0)
