"""The fault schedule (randomised, from a seed: the same seed gives the same schedule) and the
injection of each fault into a running cluster.

Kinds (KINDS), each on one target for duration_s, then healed:

- `kill` (a node or a gateway): kill -9, restarted after the duration on the same ports;
- `pause` (a node or a gateway): SIGSTOP, SIGCONT after the duration;
- `partition_gateways` (a shard): its proxy refuses (`drop`), swallows (`blackhole`) or delays
  (`delay:MS`) the gateways' connections;
- `partition_shards` (a shard): the same between it and every other node, both ways;
- `pg_restart` (a shard's PostgreSQL or the control one): stop (fast), start after the duration;
- `pg_kill` (a shard's PostgreSQL): kill -9 of its postmaster, started after the duration;
- `clock_skew` (a node or a gateway): its wall clock off by ±skew_ms for the duration;
- `clock_step` (a node): its clock jumps by ±step_s, and back after the duration;
- `disk_full` (a shard): its database refuses every journal write with `disk_full`
  (cluster.py says how and why).

One fault at a time: the schedule is a sequence with gaps, every kind at least once (the first
len(KINDS) faults are each kind once, in a shuffled order), then kinds at random.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.chaos import proxy
from bench.chaos.cluster import Cluster

KINDS = (
    "kill",
    "pause",
    "partition_gateways",
    "partition_shards",
    "pg_restart",
    "pg_kill",
    "clock_skew",
    "clock_step",
    "disk_full",
)
RESTART_TIMEOUT_S = 60.0
RESTART_PAUSE_S = 0.5


@dataclass(frozen=True)
class ScheduleConfig:
    duration_s: float
    seed: int
    shard_count: int
    gateway_count: int
    warmup_s: float = 3.0
    fault_s: tuple[float, float] = (1.0, 3.0)
    gap_s: tuple[float, float] = (0.5, 2.0)
    skew_ms: int = 1000
    step_s: int = 5
    kinds: tuple[str, ...] = KINDS


@dataclass
class Fault:
    at_s: float  # since the campaign's start
    kind: str
    target: str  # node-1, gateway-0, shard-2, pg-shard1, pg-control
    duration_s: float
    detail: str = ""  # the proxy mode, the clock offset
    started_s: float | None = None  # when it was injected, and healed
    healed_s: float | None = None
    problems: list[str] = field(default_factory=list)  # injection or healing that failed

    def describe(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.kind} {self.target}{detail} for {self.duration_s:.1f}s"


def _target(rng: random.Random, kind: str, config: ScheduleConfig) -> tuple[str, str]:
    """The target and detail of a fault of kind."""
    node = f"node-{rng.randrange(config.shard_count)}"
    shard = f"shard-{rng.randrange(config.shard_count)}"
    member = rng.choice([node, f"gateway-{rng.randrange(config.gateway_count)}"])
    if kind in ("kill", "pause"):
        return member, ""
    if kind == "partition_gateways":
        return shard, rng.choice((proxy.DROP, proxy.BLACKHOLE, f"{proxy.DELAY}:300"))
    if kind == "partition_shards":
        return shard, rng.choice((proxy.DROP, proxy.BLACKHOLE))
    if kind == "pg_restart":
        return rng.choice([f"pg-shard{shard.split('-')[1]}", "pg-control"]), ""
    if kind == "pg_kill":
        return f"pg-shard{shard.split('-')[1]}", ""
    if kind == "clock_skew":
        return member, f"{rng.choice((-1, 1)) * config.skew_ms}ms"
    if kind == "clock_step":
        return node, f"{rng.choice((-1, 1)) * config.step_s}s"
    if kind == "disk_full":
        return shard, ""
    raise ValueError(f"unknown fault kind {kind!r}")


def schedule(config: ScheduleConfig) -> list[Fault]:
    """The faults of a campaign: each kind once first (shuffled), then at random."""
    rng = random.Random(config.seed)
    first = list(config.kinds)
    rng.shuffle(first)
    faults: list[Fault] = []
    at_s = config.warmup_s
    while at_s < config.duration_s:
        kind = first.pop(0) if first else rng.choice(config.kinds)
        duration_s = round(rng.uniform(*config.fault_s), 2)
        target, detail = _target(rng, kind, config)
        faults.append(Fault(round(at_s, 2), kind, target, duration_s, detail))
        at_s += duration_s + rng.uniform(*config.gap_s)
    return faults


async def run_schedule(
    cluster: Cluster, faults: list[Fault], started: float, stop: asyncio.Event
) -> None:
    """Inject each fault at its time (one at a time), until the schedule ends or stop."""
    for fault in faults:
        wait_s = started + fault.at_s - time.monotonic()
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait_s)
        if stop.is_set():
            return
        await inject(cluster, fault, started)


async def inject(cluster: Cluster, fault: Fault, started: float) -> None:
    """Inject the fault, hold it for its duration, heal it; what failed goes in problems."""
    apply, heal = _actions(cluster, fault)
    fault.started_s = time.monotonic() - started
    try:
        await apply()
        await asyncio.sleep(fault.duration_s)
    except Exception as error:
        fault.problems.append(f"inject: {type(error).__name__}: {error}")
    finally:
        try:
            await heal()
        except Exception as error:
            fault.problems.append(f"heal: {type(error).__name__}: {error}")
        fault.healed_s = time.monotonic() - started


Step = Callable[[], Awaitable[None]]


def _actions(cluster: Cluster, fault: Fault) -> tuple[Step, Step]:
    """(apply, heal) coroutine functions for the fault."""
    kind, target = fault.kind, fault.target
    if kind == "kill":
        member = cluster.member(target)

        async def kill() -> None:
            member.held_down = True
            await member.kill()

        return kill, lambda: _restart_member(cluster, target)
    if kind == "pause":
        return _pause(cluster, target)
    if kind in ("partition_gateways", "partition_shards"):
        return _partition(cluster, fault)
    if kind in ("pg_restart", "pg_kill"):
        return _postgres(cluster, fault)
    if kind in ("clock_skew", "clock_step"):
        return _clock(cluster, fault)
    if kind == "disk_full":
        shard_id = int(target.split("-")[1])

        async def fill() -> None:
            await cluster.set_disk_full(shard_id, True)

        async def free() -> None:
            await _retrying(lambda: cluster.set_disk_full(shard_id, False))

        return fill, free
    raise ValueError(f"unknown fault kind {kind!r}")


async def _retrying(work: Step, timeout_s: float = RESTART_TIMEOUT_S) -> None:
    """work() until it succeeds, for at most timeout_s (its last failure is raised)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await work()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RESTART_PAUSE_S)


async def _restart_member(cluster: Cluster, name: str) -> None:
    member = cluster.member(name)
    try:
        await _retrying(member.start)
    finally:
        member.held_down = False  # the watchdog tries again, should this have failed


def _pause(cluster: Cluster, name: str) -> tuple[Step, Step]:
    member = cluster.member(name)

    async def stop() -> None:
        member.held_down = True
        member.signal(signal.SIGSTOP)

    async def cont() -> None:
        member.signal(signal.SIGCONT)
        member.held_down = False

    return stop, cont


def _partition(cluster: Cluster, fault: Fault) -> tuple[Step, Step]:
    shard_id = int(fault.target.split("-")[1])
    mode, _, delay = fault.detail.partition(":")
    rule = proxy.Rule(mode, int(delay or 0))
    own = cluster.proxies[shard_id]
    others = [p for k, p in enumerate(cluster.proxies) if k != shard_id]

    async def cut() -> None:
        if fault.kind == "partition_gateways":
            own.set_rule("gateway", rule)
            return
        own.set_rule("node", rule)  # its peers cannot reach it
        for other in others:  # nor it them
            other.set_rule(f"node-{shard_id}", rule)

    async def mend() -> None:
        for each in cluster.proxies:
            each.clear()

    return cut, mend


def _postgres(cluster: Cluster, fault: Fault) -> tuple[Step, Step]:
    (server,) = [p for p in cluster.postgres if f"pg-{p.name}" == fault.target]

    async def down() -> None:
        server.held_down = True
        if fault.kind == "pg_kill":
            await server.kill()
        else:
            await server.stop()

    async def up() -> None:
        try:
            await _retrying(server.start)
        finally:
            server.held_down = False

    return down, up


def _clock(cluster: Cluster, fault: Fault) -> tuple[Step, Step]:
    text = fault.detail
    offset_ns = int(text.removesuffix("ms")) * 1_000_000 if text.endswith("ms") else 0
    if text.endswith("s") and not text.endswith("ms"):
        offset_ns = int(text.removesuffix("s")) * 1_000_000_000

    async def skew() -> None:
        cluster.set_clock_offset(fault.target, offset_ns)

    async def back() -> None:
        cluster.set_clock_offset(fault.target, 0)

    return skew, back
