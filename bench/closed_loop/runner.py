"""One measured run: quiet machine, checkpoint, warm-up, window edges, result."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.closed_loop import profiling
from bench.closed_loop.environment import Environment, checkpoint
from bench.closed_loop.options import Options
from bench.closed_loop.probes import Probe, Reading
from bench.closed_loop.report import RunResult, build_result
from bench.common import cpu
from bench.common.measure import Call, CallOutcome, run_closed_loop
from bench.common.workload import ALL_WORKLOADS, Shape, TransferSource, Workload


@dataclass(slots=True)
class WindowEdges:
    """What is read at the exact edges of the measured window: CPU, WAL and journal counters,
    and the py-spy recording of the node."""

    meter: cpu.CpuMeter
    probe: Probe | None
    recording: profiling.PySpyRecording | None
    readings: list[Reading] = field(default_factory=list)

    async def open(self) -> None:
        self.meter.start()  # first: the CPU window must start exactly here
        if self.recording is not None:
            self.recording.start()
        if self.probe is not None:
            self.readings.append(await self.probe.read())

    async def close(self) -> None:
        self.meter.stop()
        if self.probe is not None:
            self.readings.append(await self.probe.read())

    async def storage(
        self, system: str, created: float, window_s: float
    ) -> dict[str, float | None]:
        """WAL bytes per transfer and commits: Tally's from its journal blocks; the row-locking
        ledger commits once per transfer by construction."""
        if self.probe is None or len(self.readings) != 2 or not created:
            return {"wal_bytes_per_transfer": None, "commits_per_s": None}
        start, end = self.readings
        wal_bytes_per_transfer = round((end.wal_bytes - start.wal_bytes) / created, 1)
        if system != "tally":
            return {"wal_bytes_per_transfer": wal_bytes_per_transfer, "commits_per_s": None}
        blocks, transactions = await self.probe.blocks_between(start, end)
        return {
            "wal_bytes_per_transfer": wal_bytes_per_transfer,
            "commits_per_s": round(blocks / window_s, 1),
            "transfers_per_commit": round(transactions / blocks, 1) if blocks else None,
        }

    async def release(self) -> None:
        if self.probe is not None:
            await self.probe.close()


@dataclass(slots=True)
class Runner:
    options: Options
    environment: Environment
    accounts: list[str]
    run_id: str
    profiles: dict[str, str] = field(default_factory=dict)

    def sources(self, workload: Workload, client_count: int) -> list[TransferSource]:
        # The same seeds for both systems: they post the very same transfers.
        number = ALL_WORKLOADS.index(workload)
        return [
            TransferSource(self.accounts, workload, self.run_id, n, seed=1000 * number + n)
            for n in range(client_count)
        ]

    def shape_of(self, workload: Workload) -> tuple[int, int]:
        """(concurrent clients, transfers per call)."""
        if workload.shape is Shape.SINGLE:
            return self.options.client_count, 1
        return self.options.batch_client_count, self.options.batch_size

    async def measure(
        self, system: str, workload: Workload, post: Callable[[list[Any]], Any]
    ) -> RunResult:
        clients, per_call = self.shape_of(workload)
        sources = self.sources(workload, clients)

        async def call(number: int) -> CallOutcome:
            outcome: CallOutcome = await post(sources[number].take(per_call))
            return outcome

        return await self._timed(system, workload, call, clients, per_call)

    async def _timed(
        self, system: str, workload: Workload, call: Call, clients: int, per_call: int
    ) -> RunResult:
        busy_cores_before = await cpu.wait_for_quiet(
            self.options.quiet_cores, self.options.quiet_wait_s
        )
        environment = self.environment
        dsn = environment.tally_dsn or environment.rowlock_dsn or environment.ceiling_dsn
        if dsn is not None:
            await checkpoint(dsn)
        edges = WindowEdges(
            cpu.CpuMeter(self.environment.roles),
            await self._probe(system),
            self._py_spy(system, workload),
        )
        try:
            window, recorder = await run_closed_loop(
                call,
                clients,
                self.options.warmup_s,
                self.options.duration_s,
                edges.open,
                edges.close,
            )
            storage = await edges.storage(system, recorder.created_in_window, window.seconds)
        finally:
            await edges.release()
        if edges.recording is not None:
            summary = await asyncio.to_thread(edges.recording.finish)
            self.profiles[f"node during {system} {workload.name} (py-spy)"] = summary
        return build_result(
            system,
            workload,
            clients,
            per_call,
            window,
            recorder,
            edges.meter.seconds_by_role(),
            busy_cores_before,
            storage,
        )

    async def _probe(self, system: str) -> Probe | None:
        environment = self.environment
        dsns = {"tally": environment.tally_dsn, "ceiling": environment.ceiling_dsn}
        dsn = dsns.get(system, environment.rowlock_dsn)
        return await Probe.open(dsn, reads_journal=system == "tally") if dsn else None

    def _py_spy(self, system: str, workload: Workload) -> profiling.PySpyRecording | None:
        pid = self.environment.node_pid
        if self.options.node_profile != "py-spy" or system != "tally" or pid is None:
            return None
        executable = profiling.py_spy_path()
        if executable is None:
            raise RuntimeError(
                "--node-profile py-spy: py-spy is not installed (pip install py-spy)"
            )
        output = self.options.out_dir / f"py-spy-{workload.name}.txt"
        return profiling.PySpyRecording(executable, pid, self.options.duration_s, output)
