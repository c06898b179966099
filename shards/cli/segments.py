"""`tally segments write`, `archive` and `verify`: each shard's journal as cold segments
(core/store/cold, docs/design.md "Cold segments" and "Cold history"), and their verification.

    tally segments write --dir ROOT [--dsn DSN] [--older-than 90d] [--blocks-per-segment N]
    tally segments archive --dir ROOT [--dsn DSN] [--older-than 90d] [--blocks-per-segment N]
                           [--every SECONDS]
                           [--store s3://BUCKET/PREFIX?endpoint=http://HOST:PORT&region=R]
    tally segments verify (--dir ROOT | --store URL) [--dsn DSN]

ROOT is the cluster's: each shard's segments are in ROOT/shard-N, N the shard its database
says it is. `write` continues that chain with the shard's blocks created before now minus
--older-than (default 0s: every block), reading the database only. `verify` checks every
shard's segments (files, digests, each block's hash from its lines, the chain from one segment
to the next) and, given a database, that each block its shard's segments hold and it still
has is the segment's. `archive` is the archiver, its own process beside the node (the node's
writer never waits for it): `write`, then each segment written and not yet recorded is verified
again, held against the database and moved out of it (recorded in cold_segments and its rows
deleted, in one transaction); with --every it does so again every SECONDS until SIGTERM or
SIGINT. Killed at any step, it leaves either a segment file not yet recorded (the next run
records it) or a recorded segment whose rows are gone, never half of one. The shard's nodes then
need --cold-dir ROOT. With --store, --dir is the archiver's staging directory: each segment is
also put into the object store (files, each read back, then its manifest) before it is
recorded, and once recorded its staging copy is removed but for the last one's manifest (the
chain goes on from it); the nodes then need --cold-store URL (and --cold-dir as their cache).
The store's credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. `verify
--store URL` checks the store's segments (downloaded to a temporary directory). `tally audit
--segments ROOT` runs the same checks as its check `segments`. Exit status: 0
done and clean, 1 findings (each on a line), 2 for anything that could not be done as asked (one
message, never a traceback). The DSN comes from --dsn or TALLY_DSN and is never printed with
its secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import asyncpg

from core import dsn as dsn_text
from core.store.cold import archive, catalog
from core.store.cold.format import SegmentError
from core.store.cold.read import Segment
from core.store.cold.store import ObjectStore, download_segment
from core.store.cold.verify import Finding
from shards import failpoints

EXIT_OK: Final = 0
EXIT_FINDINGS: Final = 1
EXIT_USAGE: Final = 2
TIMEOUT_S: Final = 60.0
_DURATION = re.compile(r"([0-9]+)(s|m|h|d)")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class _UsageError(Exception):
    pass


def parse_duration(text: str) -> int:
    """Nanoseconds of '90d', '12h', '30m' or '45s'."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise _UsageError(f"--older-than {text!r}: say a whole number and s, m, h or d (90d)")
    return int(match.group(1)) * _UNIT_S[match.group(2)] * 1_000_000_000


def run(args: argparse.Namespace) -> int:
    try:
        if args.segments_action == "write":
            return asyncio.run(_write(args))
        if args.segments_action == "archive":
            return asyncio.run(_archive(args))
        return asyncio.run(_verify(args))
    except (_UsageError, SegmentError, ValueError, OSError) as error:
        print(f"tally segments: {dsn_text.scrub(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except (asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
        message = dsn_text.scrub(f"{type(error).__name__}: {error}")
        print(f"tally segments: the database: {message}", file=sys.stderr)
        return EXIT_USAGE


def dsn_of(args: argparse.Namespace) -> str:
    """The shard's DSN: --dsn, else TALLY_DSN (read when the command runs)."""
    return str(args.dsn) if args.dsn is not None else os.environ.get("TALLY_DSN", "")


def _dsn(args: argparse.Namespace, required: bool) -> str:
    dsn = dsn_of(args)
    if required and not dsn:
        raise _UsageError("--dsn (or TALLY_DSN) is needed")
    return dsn


async def _write(args: argparse.Namespace) -> int:
    cutoff_ns = time.time_ns() - parse_duration(args.older_than)
    connection = await asyncpg.connect(_dsn(args, True), timeout=TIMEOUT_S)
    try:
        run = await archive.archive(
            connection,
            args.dir,
            created_before_ns=cutoff_ns,
            blocks_per_segment=args.blocks_per_segment,
            timeout_s=TIMEOUT_S,
        )
    finally:
        await connection.close()
    for path in run.written:
        print(f"tally segments: wrote {path}")
    print(
        f"tally segments: {args.dir} holds shard {run.shard}'s blocks 1 to {run.last_block} "
        f"({len(run.written)} segment(s) written now; the journal's head is {run.head_block})"
    )
    return EXIT_OK


async def _archive(args: argparse.Namespace) -> int:
    older_than_ns = parse_duration(args.older_than)
    if args.every < 0:
        raise _UsageError(f"--every {args.every:g}: say a number of seconds, 0 for once")
    dsn = _dsn(args, True)
    store = ObjectStore(args.store) if args.store else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    while True:
        # A connection a pass: an archiver that runs for months outlives any one of them.
        connection = await asyncpg.connect(dsn, timeout=TIMEOUT_S)
        try:
            run, removed = await archive.archive_and_remove(
                connection,
                args.dir,
                created_before_ns=time.time_ns() - older_than_ns,
                blocks_per_segment=args.blocks_per_segment,
                timeout_s=TIMEOUT_S,
                step=_step,
                store=store,
            )
        finally:
            await connection.close()
        for done in removed:
            print(
                f"tally segments: moved {done.name} (blocks {done.first_block} to "
                f"{done.last_block}) out of the database: {done.postings_deleted} postings, "
                f"{done.transactions_deleted} transactions",
                flush=True,
            )
        print(
            f"tally segments: shard {run.shard}'s blocks 1 to {run.last_block} are cold "
            f"(the journal's head is {run.head_block})",
            flush=True,
        )
        if not args.every:
            return EXIT_OK
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.every)
        if stop.is_set():
            return EXIT_OK


async def _step(name: str) -> None:
    if failpoints.ARMED:
        await failpoints.hit(f"archive.{name}")


async def _verify(args: argparse.Namespace) -> int:
    if (args.dir is None) == (not args.store):
        raise _UsageError("say where the segments are: --dir ROOT or --store URL")
    if args.store:
        store = ObjectStore(args.store)
        with tempfile.TemporaryDirectory(prefix="tally-segments-verify-") as temporary:
            args.dir = Path(temporary)
            if not await asyncio.to_thread(_download_all, store, args.dir):
                raise _UsageError(f"{store} holds no shard's segments (no shard-N)")
            return await _verify_directory(args, f" in {store}")
    return await _verify_directory(args, "")


def _download_all(store: ObjectStore, root: Path) -> list[int]:
    """Every shard's segments from the store into root/shard-N, as they are there (verify
    judges them); the shards found."""
    shards = store.shards()
    for shard in shards:
        directory = catalog.shard_directory(root, shard)
        directory.mkdir(parents=True)
        for name in store.segment_names(shard):
            download_segment(store, shard, name, directory)
    return shards


async def _verify_directory(args: argparse.Namespace, where: str) -> int:
    directories = catalog.shard_directories(args.dir)
    if not directories:
        raise _UsageError(f"{args.dir} holds no shard's segments (no shard-N directory)")
    dsn = _dsn(args, False)
    connection = await asyncpg.connect(dsn, timeout=TIMEOUT_S) if dsn else None
    try:
        witnessed = await archive.shard_of(connection, TIMEOUT_S) if connection else None
        counts = []
        for shard in directories:
            witness = connection if shard == witnessed else None
            paths, findings = await archive.verify_shard(witness, args.dir, shard, TIMEOUT_S)
            for finding in findings:
                print(f"shard {shard}: {_line(finding)}")
            last = Segment(paths[-1]).manifest.last_block if paths else 0
            state = "clean" if not findings else f"{len(findings)} finding(s)"
            against = ", against the database" if witness is not None else ""
            print(
                f"tally segments: shard {shard}{where}: {len(paths)} segment(s), blocks 1 to {last}"
                f"{against}: {state}"
            )
            counts.append(len(findings))
    finally:
        if connection is not None:
            await connection.close()
    return EXIT_OK if not any(counts) else EXIT_FINDINGS


def _line(finding: Finding) -> str:
    where = [part for part in (finding.segment, finding.file) if part]
    if finding.block is not None:
        where.append(f"block {finding.block}")
    return f"{finding.code}: {finding.message}" + (f" ({', '.join(where)})" if where else "")
