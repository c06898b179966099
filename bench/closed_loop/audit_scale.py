"""How long the audit takes on a large shard, and how much memory it needs.

`python -m bench.closed_loop.audit_scale` starts an embedded PostgreSQL, writes
--transfer-count two-leg transfers (2 postings each; 500,000 by default, so 1,000,000 postings)
through an in-process shard node in batches of --batch-size, stops the node, then runs
`tally audit`, `tally export` and `tally verify-export` as child processes, timing each and
reading each one's peak resident memory from the kernel (getrusage of the waited-for child).

The node serves TLS with a credentials directory made next to the data (DATA_DIR/tls) and is
called with that directory's admin identity. --data-dir keeps the database (and the
credentials) between runs; --reuse audits it again without writing.
Writes results.json next to the data when --out is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import uvloop

from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port
from shards.node.server import Node, NodeConfig
from shards.security import directory
from shards.security.credentials import ClientSecurity, aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

DATABASE: Final = "audit_scale"
RPC_TIMEOUT_S: Final = 120.0
CONCURRENT_REQUESTS: Final = 3


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.closed_loop.audit_scale", description=__doc__
    )
    parser.add_argument("--transfer-count", type=int, default=500_000)
    parser.add_argument("--account-count", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=8_000)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="audit the existing database")
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    return parser.parse_args(argv)


async def _post_all(port: int, arguments: argparse.Namespace, security: ClientSecurity) -> float:
    accounts = [f"c{i}/dep" for i in range(arguments.account_count)]
    rng = random.Random(7)
    started = time.monotonic()
    async with aio_channel(
        f"127.0.0.1:{port}", security, [("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        stub = pb_grpc.LedgerStub(channel)
        for first in range(0, len(accounts), arguments.batch_size):
            chunk = [
                pb.Account(id=a, currency="USD", code=100)
                for a in accounts[first : first + arguments.batch_size]
            ]
            await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=chunk), timeout=60)
        limit = asyncio.Semaphore(CONCURRENT_REQUESTS)

        async def send(first: int) -> None:
            count = min(arguments.batch_size, arguments.transfer_count - first)
            batch = [_transfer(first + i, rng, accounts) for i in range(count)]
            async with limit:
                response = await stub.PostTransactions(
                    pb.PostTransactionsRequest(transactions=batch), timeout=RPC_TIMEOUT_S
                )
            bad = [r for r in response.results if r.code != pb.RESULT_CODE_CREATED]
            if bad:
                raise RuntimeError(f"{len(bad)} transfers refused: {bad[0]}")

        async with asyncio.TaskGroup() as group:
            for first in range(0, arguments.transfer_count, arguments.batch_size):
                group.create_task(send(first))
    return time.monotonic() - started


def _transfer(number: int, rng: random.Random, accounts: list[str]) -> pb.Transaction:
    debit, credit = rng.sample(accounts, 2)
    amount = rng.randint(1, 100_000)
    return pb.Transaction(
        id=f"t{number}",
        code=1,
        legs=[
            pb.Leg(account_id=debit, side=pb.SIDE_DEBIT, amount=amount, currency="USD"),
            pb.Leg(account_id=credit, side=pb.SIDE_CREDIT, amount=amount, currency="USD"),
        ],
    )


async def _write(dsn: str, arguments: argparse.Namespace, credentials: Path) -> float:
    security = directory.server_security(credentials)
    node = Node(
        NodeConfig(dsn=dsn, listen="127.0.0.1:0", security=security, durability="single-server")
    )
    port = await node.start()
    task = asyncio.create_task(node.run())
    try:
        async with asyncio.timeout(60):
            # The node exposes no event for taking the lease: poll.
            while node.writer is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return await _post_all(port, arguments, directory.client_security(credentials))
    finally:
        node.request_stop()
        await asyncio.wait_for(task, timeout=120)


# The child reports its own peak RSS: VmHWM of its address space since exec. (getrusage's
# ru_maxrss of a child would include this process's pages that the fork copied before exec.)
_MEASURED_CHILD: Final = """
import resource, sys
from shards.audit import commands as auditing
code = auditing.main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak = next(line for line in status if line.startswith("VmHWM:"))
usage = resource.getrusage(resource.RUSAGE_SELF)
print("peak " + peak.split()[1], file=sys.stderr)
print("cpu " + str(usage.ru_utime + usage.ru_stime), file=sys.stderr)
sys.exit(code)
"""


def _child(arguments: list[str], dsn: str = "") -> dict[str, Any]:
    """Run one auditing command in a child process: its wall time, CPU time and peak RSS. Its
    shard database is given in TALLY_AUDIT_DSNS (it holds a password: never on a command
    line)."""
    started = time.monotonic()
    environment = {**os.environ, **({"TALLY_AUDIT_DSNS": dsn} if dsn else {})}
    process = subprocess.Popen(
        [sys.executable, "-c", _MEASURED_CHILD, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
    )
    stdout, stderr = process.communicate()
    seconds = time.monotonic() - started
    reported = dict(
        line.split(" ", 1)
        for line in stderr.decode().splitlines()
        if line.startswith(("peak ", "cpu "))
    )
    return {
        "command": arguments[0],
        "exit_code": process.returncode,
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(int(reported.get("peak", "0")) / 1024, 1),
        # The command's own CPU time (PostgreSQL's work is in its server processes).
        "cpu_seconds": round(float(reported.get("cpu", "0")), 2),
        "stdout_tail": stdout.decode()[:600],
        "stderr_tail": stderr.decode()[-600:],
    }


def main(argv: list[str] | None = None) -> int:
    arguments = parse(argv)
    data_dir = arguments.data_dir or Path(tempfile.mkdtemp(prefix="tally-audit-scale-"))
    server = EmbeddedPostgres(
        EmbeddedPostgresConfig(data_dir=data_dir / "pg", port=_port(data_dir))
    )
    server.start()
    try:
        if not arguments.reuse:
            server.create_database(DATABASE)
        dsn = server.dsn(DATABASE)
        results: dict[str, Any] = {}
        if not arguments.reuse:
            results["transfers"] = arguments.transfer_count
            credentials = data_dir / "tls"
            directory.init(credentials)
            results["write_seconds"] = round(uvloop.run(_write(dsn, arguments, credentials)), 1)
            print(f"wrote {arguments.transfer_count:,} transfers", flush=True)
        results["audit"] = _child(["audit", "--no-progress"], dsn)
        results["postings"] = _postings_audited(results["audit"]["stdout_tail"])
        export_dir = data_dir / "export"
        results["export"] = _child(["export", "--out", str(export_dir)], dsn)
        results["verify"] = _child(["verify-export", str(export_dir)])
        results["export_bytes"] = sum(
            p.stat().st_size for p in export_dir.rglob("*") if p.is_file()
        )
        results["self_peak_rss_mib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        )
        print(json.dumps(results, indent=2))
        if arguments.out is not None:
            arguments.out.mkdir(parents=True, exist_ok=True)
            (arguments.out / "results.json").write_text(json.dumps(results, indent=2))
        return 0 if all(results[k]["exit_code"] == 0 for k in ("audit", "export", "verify")) else 1
    finally:
        server.stop()


def _postings_audited(audit_output: str) -> int:
    """From the audit's first line: "tally audit: 1 shard(s), 1,000,000 postings, ..."."""
    for part in audit_output.splitlines()[0].split(", ") if audit_output else []:
        if part.endswith(" postings"):
            return int(part.split()[0].replace(",", ""))
    return 0


def _port(data_dir: Path) -> int:
    port_file = data_dir / "pg-port"
    data_dir.mkdir(parents=True, exist_ok=True)
    if port_file.exists():
        return int(port_file.read_text())
    port = free_port()
    port_file.write_text(str(port))
    return port


if __name__ == "__main__":
    sys.exit(main())
