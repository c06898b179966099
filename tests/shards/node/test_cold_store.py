"""Cold segments in an S3-compatible object store (a real SeaweedFS server on loopback): the
archiver (`tally segments archive --store`, its own process) killed at each of its steps,
uploads included, then run again; every time, a node reading the store (--cold-store, its
--cold-dir a cache) reads every posting exactly once and every transaction by id. Recorded
segments leave the staging directory (a lost one is restored from the store), a node with an
empty cache reads everything from the store fetching one file at a time, and an object altered
in the store is refused by the node (DATA_LOSS) and named by `tally segments verify --store`."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import grpc
import pytest
from pyarrow.fs import FileSelector

from shards.node.server import ColdDirectoryError
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.cold import check_whole, tally_segments
from tests.support.helpers import Client, NodeHandle, account, start_node, transfer
from tests.support.object_store import BUCKET, ObjectStoreServer, free_ports

CREATED = pb.RESULT_CODE_CREATED
TIMEOUT_S = 120.0
ACCOUNTS = ("@cash", "cust-1/deposit", "cust-2/deposit")
STEPS = ("segment_written", "file_uploaded", "segment_uploaded", "rows_deleted", "segment_recorded")


async def _post(client: Client, posted: list[tuple[str, str, int]], count: int) -> None:
    for _ in range(count):  # one block each
        n = len(posted)
        to = f"cust-{1 + n % 2}/deposit"
        item = transfer(f"cust-1/t-{n}", "@cash", to, 1 + n)
        assert await client.codes(item) == [CREATED]
        posted.append((item.id, to, 1 + n))


async def _node(dsn: str, cache: Path, url: str) -> NodeHandle:
    return await start_node(dsn, cold_dir=str(cache), cold_store=url)


# Why long: the archiver killed at each step, then the store read from a cold cache, altered.
async def test_archiving_to_an_object_store_loses_and_doubles_nothing(
    dsn: str, tmp_path: Path, object_store: ObjectStoreServer
) -> None:
    url = object_store.url(BUCKET, f"cold-{tmp_path.name}")
    staging = tmp_path / "staging"
    archive = ("archive", "--dir", str(staging), "--store", url, "--older-than", "0s")
    archive += ("--blocks-per-segment", "3")
    posted: list[tuple[str, str, int]] = []
    handle = await _node(dsn, tmp_path / "cache", url)
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            assert await client.create(*(account(a) for a in ACCOUNTS)) == [CREATED] * 3
            for step in STEPS:
                await _post(client, posted, 4)
                code, output = await tally_segments(dsn, *archive, failpoint=step)
                assert code == -signal.SIGKILL, output
                assert f"failpoint archive.{step} reached" in output
                await check_whole(client, ACCOUNTS[1:], posted)
            started = time.monotonic()
            code, output = await tally_segments(dsn, *archive)
            upload_s = time.monotonic() - started
            assert code == 0 and "moved segment-" in output, output
            await check_whole(client, ACCOUNTS[1:], posted)
            # Staging lost (a new pod): the chain goes on from the store's last segment.
            shutil.rmtree(staging)
            await _post(client, posted, 4)
            code, output = await tally_segments(dsn, *archive)
            assert code == 0 and "moved segment-" in output, output
            await check_whole(client, ACCOUNTS[1:], posted)
    finally:
        await handle.stop()
    # Staging keeps no recorded segment but the last one's manifest (the chain goes on there).
    kept = sorted((staging / "shard-0").iterdir())
    assert len(kept) == 1 and [f.name for f in kept[0].iterdir()] == ["manifest.json"]
    code, output = await tally_segments(dsn, "verify", "--store", url, "--dsn", dsn)
    assert code == 0 and "against the database: clean" in output, output

    # A node with an empty cache: the startup check fetches the manifests only, each read
    # fetches the one file it needs, and every answer is the same.
    cache = tmp_path / "cache-2"
    handle = await _node(dsn, cache, url)
    try:
        fetched = {f.name for d in (cache / "shard-0").iterdir() for f in d.iterdir()}
        assert fetched == {"manifest.json"}
        async with security.channel(handle.target) as channel:
            started = time.monotonic()
            await check_whole(Client(channel), ACCOUNTS[1:], posted)
            first_read_s = time.monotonic() - started
    finally:
        await handle.stop()
    stored = object_store.filesystem().get_file_info(
        FileSelector(f"{BUCKET}/cold-{tmp_path.name}", recursive=True)
    )
    print(
        f"final archive pass {upload_s:.2f} s, first whole read from the store "
        f"{first_read_s:.2f} s, {len(stored)} entries, {sum(i.size or 0 for i in stored)} bytes"
    )

    # An object altered in the store: the node refuses to read it, verify names it.
    filesystem = object_store.filesystem()
    first = sorted(d.name for d in (cache / "shard-0").iterdir())[0]
    key = f"{BUCKET}/cold-{tmp_path.name}/shard-0/{first}/postings.parquet"
    with filesystem.open_input_stream(key) as source:
        data = bytearray(source.read())
    data[len(data) // 2] ^= 0xFF
    with filesystem.open_output_stream(key) as out:
        out.write(bytes(data))
    handle = await _node(dsn, tmp_path / "cache-3", url)
    try:
        async with security.channel(handle.target) as channel:
            try:
                await Client(channel).stub.ListPostings(
                    pb.ListPostingsRequest(account_id="cust-1/deposit"), timeout=30
                )
                raise AssertionError("an altered object was read")
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.DATA_LOSS, error
                assert "SHA-256" in (error.details() or "")
    finally:
        await handle.stop()
    code, output = await tally_segments(dsn, "verify", "--store", url)
    assert code == 1, output
    assert "file_digest" in output and first in output and "postings.parquet" in output, output

    # A store that cannot be reached: the node cannot check its cold history and refuses.
    (port,) = free_ports(1)
    unreachable = f"s3://{BUCKET}/cold-{tmp_path.name}?endpoint=http://127.0.0.1:{port}"
    with pytest.raises(ColdDirectoryError, match="cannot be checked"):
        await _node(dsn, tmp_path / "cache-4", unreachable)
