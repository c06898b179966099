"""A local cluster for a benchmark: `tally up --shards N` started in the background through the
process supervisor, stopped in order, and the CPU samplers of its process roles (shard nodes,
gateway, PostgreSQL). Both suites use it (bench.closed_loop.cluster, bench.locust.suite).

`tally up` makes its credentials directory (DATA_DIR/tls: CA, cluster certificate, admin
identity) before it serves and gives its nodes and gateway their TLS flags itself; the bench's
clients present that directory's admin identity (admin_credentials)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import psutil

from bench.common import cpu
from bench.common.credentials import ClientCredentials
from bench.common.paths import REPO_ROOT
from shards.local import supervisor
from shards.local.supervisor import LEDGER_SERVING_PREFIX, TallyProcess
from shards.security import flags

START_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 60.0


def role_sampler(root_pid: int, marker: str) -> cpu.Sampler:
    """The descendants of root_pid whose command line contains marker (or named marker)."""

    def sample() -> dict[cpu.SampleKey, float]:
        try:
            children = psutil.Process(root_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return {}
        chosen = []
        for child in children:
            try:
                if marker in " ".join(child.cmdline()) or child.name() == marker:
                    chosen.append(child)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return cpu._sample(chosen)

    return sample


def postgres_sampler(data_dir: Path) -> cpu.Sampler:
    """Every PostgreSQL process of `tally up --data-dir data_dir`: pg_ctl detaches the
    postmaster (it is not a descendant of `tally up`), so it is found by its pid file."""

    def sample() -> dict[cpu.SampleKey, float]:
        try:
            pid = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return {}
        return cpu.process_tree(pid)()

    return sample


def admin_credentials(data_dir: Path) -> ClientCredentials:
    """The admin identity of `tally up --data-dir data_dir` (there once its gateway serves)."""
    return ClientCredentials.admin_of(flags.local_directory(data_dir))


async def start_cluster(
    data_dir: Path,
    shards: int,
    port: int,
    extra_args: Sequence[str] = (),
    lines: list[str] | None = None,
) -> TallyProcess:
    """`tally up --shards N` in the background (its log in data_dir's parent, up.log); returns
    once its gateway serves. The lines it printed until then (shard endpoints, metrics
    endpoints) are appended to `lines`."""
    arguments = ["up", "--shards", str(shards), "--data-dir", str(data_dir)]
    arguments += ["--listen", f"127.0.0.1:{port}", *extra_args]
    up = await supervisor.start(
        arguments,
        data_dir.parent / "up.log",
        name="tally up",
        append=False,
        cwd=REPO_ROOT,
        serving_prefixes=(LEDGER_SERVING_PREFIX,),
        serving_timeout_s=START_TIMEOUT_S,
    )
    if lines is not None:
        lines += up.stdout_lines
    return up


async def stop_cluster(up: TallyProcess, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGINT (drain, commit, stop PostgreSQL), then kill if it takes longer than timeout_s."""
    await up.stop(timeout_s, signal.SIGINT)


async def batched_load(
    target: str, credentials: ClientCredentials, accounts: int, duration_s: float, out: Path
) -> dict[str, Any]:
    """One measured window of the batched write rate against target (`bench.closed_loop.
    single_node --systems tally --workloads batch-uniform`, a process of its own, its report in
    out): its rate, latency and CPU per transfer by role."""
    command = [
        sys.executable, "-m", "bench.closed_loop.single_node", "--target", target,
        "--systems", "tally", "--workloads", "batch-uniform", "--accounts", str(accounts),
        "--duration-s", str(duration_s), "--warmup-s", "2", "--out", str(out),
        "--quiet-wait-s", "0", *credentials.client_flags(),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, cwd=REPO_ROOT)
    code = await process.wait()
    if code != 0:
        raise RuntimeError(f"the load failed (exit {code}); see {out}")
    results = json.loads((out / "results.json").read_text())
    (run,) = [r for r in results["runs"] if r["system"] == "tally"]
    return {
        "transfers_per_s": run["transfers_per_s"],
        "latency_ms": run["latency_ms"],
        "cpu_us_per_transfer": run.get("cpu_us_per_transfer", {}),
        "cores_busy": run.get("cores_busy", {}),
    }
