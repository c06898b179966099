"""What the numbers were measured on: cores, CPU model, memory, PostgreSQL and its settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import asyncpg
import grpc
import psutil

from bench.common.paths import REPO_ROOT

# The settings that decide a write benchmark's result on PostgreSQL.
PG_SETTINGS: Final = (
    "server_version",
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "wal_level",
    "wal_sync_method",
    "wal_compression",
    "commit_delay",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "max_connections",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_version() -> str:
    """The commit measured, and whether core/ or shards/ differ from it (others edit them)."""
    try:
        commit = _git(REPO_ROOT, "rev-parse", "--short", "HEAD")
        dirty = _git(REPO_ROOT, "status", "--porcelain", "--", "core", "shards", "proto")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty.splitlines()]
    return commit + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def _git(root: Path, *args: str) -> str:
    # Only the trailing newline: a porcelain status line starts with a space (" M path").
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=10.0, check=True
    ).stdout.rstrip("\n")


def host_info() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "asyncpg": asyncpg.__version__,
        "source": source_version(),
    }


async def postgres_settings(dsn: str) -> dict[str, str]:
    connection = await asyncpg.connect(dsn, timeout=30.0)
    try:
        settings = {}
        for name in PG_SETTINGS:
            settings[name] = await connection.fetchval(f"SHOW {name}", timeout=10.0)
        return settings
    finally:
        await connection.close(timeout=10.0)
