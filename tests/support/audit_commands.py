"""`python -m shards.audit.commands` (audit, export, verify-export, reconcile, statement) run in
a child process, as an auditor runs it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from tests.support.paths import REPO_ROOT

CLI_TIMEOUT_S = 120.0


async def run_cli(*arguments: str) -> tuple[int, str, str]:
    """`python -m shards.audit.commands ...` in a child process: (exit code, stdout, stderr)."""
    environment = {k: v for k, v in os.environ.items() if k != "TALLY_AUDIT_DSNS"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shards.audit.commands",
        *arguments,
        cwd=REPO_ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=CLI_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def audit_cli(*dsns: str, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    arguments = [a for dsn in dsns for a in ("--dsn", dsn)]
    code, stdout, stderr = await run_cli("audit", *arguments, "--no-progress", *extra)
    assert code != 2, stderr
    return code, stdout


async def audit_json(*dsns: str, extra: tuple[str, ...] = ()) -> tuple[int, dict[str, Any]]:
    code, stdout = await audit_cli(*dsns, extra=("--json", *extra))
    return code, json.loads(stdout)
