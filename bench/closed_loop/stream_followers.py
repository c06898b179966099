"""Readers of the change stream, for the stream's cost on the writer: `python -m
bench.closed_loop.stream_followers --target HOST:PORT --count K`.

Opens K Ledger.StreamJournal streams with follow (from the start of the journal, so each first
catches up from the store and then follows the writer's commits; with --from-head, from the
head, following only what commits from then on) and reads them as fast as they
come until SIGINT or SIGTERM; then prints one JSON line: blocks and postings read per stream,
and how far behind the last one it read each ended. Credentials as for every bench client
(default: tally up's admin identity, whose auditor role may read the whole stream).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time

import grpc

from bench.common.credentials import ClientCredentials, add_client_flags
from shards.security.credentials import aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

MESSAGE_OPTIONS = [("grpc.max_receive_message_length", 17 * 1024 * 1024)]


async def _head(stub: pb_grpc.LedgerStub) -> int:
    """The shard's head, as the node names it when asked for a position beyond it."""
    far = pb.StreamJournalRequest(after=[pb.ShardPosition(shard_id=0, sequence=2**62)])
    try:
        async for _ in stub.StreamJournal(far, timeout=30):
            break
    except grpc.aio.AioRpcError as error:
        found = re.search(r"head, block (\d+)", error.details() or "")
        if found:
            return int(found.group(1))
        raise
    raise RuntimeError("the node streamed a block beyond 2**62")


ENCODINGS = {"records": pb.JOURNAL_ENCODING_RECORDS, "lines": pb.JOURNAL_ENCODING_LINES}


async def _follow(target: str, args: argparse.Namespace, stopping: asyncio.Event) -> dict[str, int]:
    read = {"blocks": 0, "postings": 0, "last_sequence": 0, "errors": 0}
    security = ClientCredentials.from_args(args).security()
    async with aio_channel(target, security, MESSAGE_OPTIONS) as channel:
        stub = pb_grpc.LedgerStub(channel)
        if args.from_head:
            read["last_sequence"] = await _head(stub)
        while not stopping.is_set():
            after = [pb.ShardPosition(shard_id=0, sequence=read["last_sequence"])]
            encoding = ENCODINGS[args.encoding]
            request = pb.StreamJournalRequest(after=after, follow=True, encoding=encoding)
            call = stub.StreamJournal(request)
            stopped = asyncio.ensure_future(stopping.wait())
            try:
                while True:
                    block = asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait({block, stopped}, return_when="FIRST_COMPLETED")
                    if stopped in done:
                        block.cancel()
                        call.cancel()
                        return read
                    message = block.result()
                    if message is grpc.aio.EOF:
                        break
                    read["blocks"] += 1
                    read["postings"] += len(message.postings) or message.lines.count(b"\nP|")
                    read["last_sequence"] = message.sequence
            except grpc.aio.AioRpcError:
                read["errors"] += 1
                await asyncio.sleep(0.2)
            finally:
                stopped.cancel()
    return read


async def main_async(args: argparse.Namespace) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    started = time.monotonic()
    print(f"followers: {args.count} streams on {args.target}", flush=True)
    results = await asyncio.gather(
        *(_follow(args.target, args, stopping) for _ in range(args.count))
    )
    seconds = time.monotonic() - started
    print(json.dumps({"seconds": round(seconds, 1), "streams": results}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.closed_loop.stream_followers")
    parser.add_argument("--target", required=True)
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument(
        "--from-head", action="store_true", help="follow from the head (default: the start)"
    )
    parser.add_argument(
        "--encoding", choices=sorted(ENCODINGS), default="records",
        help="the blocks as records (messages) or as the lines the writer hashed",
    )  # fmt: skip
    add_client_flags(parser)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
