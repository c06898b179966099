"""The relay: Ledger.StreamJournal (a gateway's, or one node's) into a NATS JetStream stream.

Each journal block is one message on `<prefix>.<shard>` (default `tally.journal.0`, ...): its
payload the `tally.v1.JournalBlock` with its records (protobuf bytes), its headers
`Tally-Shard`, `Tally-Sequence` and `Nats-Msg-Id: tally:<shard>:<sequence>` (a message id
derived from the journal position).

Exactly once, per shard, in journal order, across any restart of the relay, the ledger or the
broker:

- The position to resume from is the broker's: at every (re)start the relay reads the last
  message stored on each shard's subject and asks the ledger for the blocks after it. Nothing
  the broker kept is sent again, and nothing is skipped.
- Blocks are published one at a time per shard, each acknowledged before the next, and each
  with `Nats-Expected-Last-Subject-Sequence` set to the stream sequence of the shard's
  previous message: the broker refuses a message that does not follow the last one it stored
  on that subject (a second relay racing this one, or a publish whose answer was lost and
  which in fact landed). On any refusal or failure the relay starts over from the broker's
  position; a block whose publish landed without its answer is then found stored, and not
  sent again. (The message id also lets JetStream's duplicate window drop such a resend.)
- The ledger's stream is gap-free and in order per shard; the relay checks each block's
  sequence follows the one before, and starts over if one does not.

The relay asks the ledger for JOURNAL_ENCODING_LINES, the lines each block's writer hashed,
which costs the writer nothing (the records cost it a message build per block); it checks each
block's lines against its hash and makes the records itself (shards.rpc.stream.records_of_lines:
the records the ledger sends but for a posting's available balance, 0, and the coordinator's
view of a cross-shard hold's post), so a block that does not match its hash is never published:
the relay stops with an error naming it.

Back-pressure: the relay reads the ledger's stream only as fast as the broker acknowledges,
so a slow broker makes the relay fall behind, never the ledger's writer (StreamJournal reads
the stored journal). A block larger than the broker's max_payload cannot be relayed: the
relay stops with an error naming it rather than skip it (the embedded server allows 20 MiB,
above the ledger's 16 MiB message limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from shards.rpc import broker as broker_connection
from shards.rpc import stream as messages
from shards.security.credentials import ClientSecurity, aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

log = logging.getLogger("tally.relay")

SHARD_HEADER: Final = "Tally-Shard"
SEQUENCE_HEADER: Final = "Tally-Sequence"
MESSAGE_ID_HEADER: Final = "Nats-Msg-Id"
EXPECTED_LAST_HEADER: Final = "Nats-Expected-Last-Subject-Sequence"
PUBLISH_TIMEOUT_S: Final = 10.0
# JetStream drops a resent message id within this window (the relay's own check does not
# depend on it).
DUPLICATE_WINDOW_S: Final = 120.0
RETRY_FIRST_S: Final = 0.2
RETRY_MAX_S: Final = 5.0
# gRPC's receive limit on the ledger stream: the ledger's own message limit.
RECEIVE_MESSAGE_MAX_BYTES: Final = 16 * 1024 * 1024 + 64 * 1024


class RelayError(RuntimeError):
    """A block the relay cannot relay (too large for the broker): stop and say which."""


@dataclass(frozen=True)
class RelayConfig:
    """Where the ledger is (a gateway or a node), with the credentials it is read with (a
    `monitor` over `**`, an `auditor` or the cluster's identity), and where the broker is, with
    the TLS context it is reached with (the relay's certificate, of the broker's CA)."""

    target: str
    security: ClientSecurity
    nats_url: str
    nats_tls: ssl.SSLContext
    stream_name: str = broker_connection.JOURNAL_STREAM
    subject_prefix: str = broker_connection.JOURNAL_SUBJECT_PREFIX

    def __post_init__(self) -> None:
        for part in self.subject_prefix.split("."):
            if not part or any(c in part for c in " *>\t\n"):
                raise ValueError(f"subject prefix {self.subject_prefix!r} is not a NATS subject")
        if not self.stream_name or any(c in self.stream_name for c in " .*>/\\\t\n"):
            raise ValueError(f"stream name {self.stream_name!r} is not a JetStream stream name")

    def subject(self, shard_id: int) -> str:
        return f"{self.subject_prefix}.{shard_id}"


def message_id(shard_id: int, sequence: int) -> str:
    return f"tally:{shard_id}:{sequence}"


@dataclass
class Stored:
    """What the broker holds of one shard: its last block's journal sequence and that
    message's stream sequence (0, 0: nothing yet)."""

    sequence: int = 0
    stream_sequence: int = 0


@dataclass
class RelayCounters:
    """What the relay has done since it started (for its metrics and its tests)."""

    published: dict[int, int] = field(default_factory=dict)  # blocks, by shard
    restarts: int = 0
    last_error: str = ""


async def ensure_stream(js: JetStreamContext, config: RelayConfig) -> None:
    """The relay's stream, made if missing: file storage, every shard's subject."""
    subjects = [f"{config.subject_prefix}.>"]
    try:
        info = await js.stream_info(config.stream_name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=config.stream_name,
                subjects=subjects,
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )
        return
    if list(info.config.subjects or []) != subjects:
        raise RelayError(
            f"stream {config.stream_name} holds subjects {info.config.subjects}, not {subjects}"
        )


async def broker_positions(js: JetStreamContext, config: RelayConfig) -> dict[int, Stored]:
    """Per shard, the last block the broker stored (read from its headers)."""
    info = await js.stream_info(config.stream_name, subjects_filter=f"{config.subject_prefix}.>")
    positions: dict[int, Stored] = {}
    for subject in sorted((info.state.subjects or {}).keys()):
        last = await js.get_last_msg(config.stream_name, subject)
        headers = last.headers or {}
        shard_id = int(headers[SHARD_HEADER])
        if config.subject(shard_id) != subject:
            raise RelayError(f"message {last.seq} on {subject} says it is shard {shard_id}'s")
        assert last.seq is not None, f"the last message on {subject} has no stream sequence"
        positions[shard_id] = Stored(int(headers[SEQUENCE_HEADER]), int(last.seq))
    return positions


class Relay:
    """Runs until told to stop, starting over from the broker's position after any failure
    (with a growing delay), and stopping with RelayError for a block it can never relay."""

    def __init__(
        self, config: RelayConfig, on_published: Callable[[int, int], None] | None = None
    ) -> None:
        self.config = config
        self.counters = RelayCounters()
        self._on_published = on_published

    async def run(self, stopping: asyncio.Event) -> None:
        delay_s = RETRY_FIRST_S
        while not stopping.is_set():
            try:
                await self._relay_until_failure(stopping)
                delay_s = RETRY_FIRST_S
            except RelayError:
                raise
            except (grpc.aio.AioRpcError, nats.errors.Error, OSError, TimeoutError) as error:
                self.counters.restarts += 1
                self.counters.last_error = f"{type(error).__name__}: {error}"
                log.warning("relay: %s; starting over in %.1f s", self.counters.last_error, delay_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=delay_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)

    async def _relay_until_failure(self, stopping: asyncio.Event) -> None:
        broker = await broker_connection.connect(self.config.nats_url, self.config.nats_tls)
        try:
            js = broker.jetstream()
            await ensure_stream(js, self.config)
            positions = await broker_positions(js, self.config)
            log.info(
                "relay: resuming after %s",
                {shard: stored.sequence for shard, stored in sorted(positions.items())} or "none",
            )
            await self._follow(broker, js, positions, stopping)
        finally:
            with contextlib.suppress(Exception):
                await broker.close()

    async def _follow(
        self,
        broker: NatsClient,
        js: JetStreamContext,
        positions: dict[int, Stored],
        stopping: asyncio.Event,
    ) -> None:
        request = pb.StreamJournalRequest(
            after=[
                pb.ShardPosition(shard_id=shard, sequence=stored.sequence)
                for shard, stored in sorted(positions.items())
            ],
            follow=True,
            encoding=pb.JOURNAL_ENCODING_LINES,
        )
        options = [("grpc.max_receive_message_length", RECEIVE_MESSAGE_MAX_BYTES)]
        async with aio_channel(self.config.target, self.config.security, options) as channel:
            call = pb_grpc.LedgerStub(channel).StreamJournal(request)
            stopped = asyncio.ensure_future(stopping.wait())
            try:
                while True:
                    read = asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait({read, stopped}, return_when="FIRST_COMPLETED")
                    if stopped in done:
                        read.cancel()
                        call.cancel()
                        return
                    block = read.result()
                    if block is grpc.aio.EOF:
                        raise OSError("the ledger ended its stream")
                    try:
                        records = messages.records_of_lines(block)
                    except messages.LinesError as error:
                        raise RelayError(f"{error}: not published") from None
                    await self._publish(broker, js, positions, records)
            finally:
                stopped.cancel()

    async def _publish(
        self,
        broker: NatsClient,
        js: JetStreamContext,
        positions: dict[int, Stored],
        block: Any,
    ) -> None:
        shard = int(block.shard_id)
        stored = positions.setdefault(shard, Stored())
        if block.sequence != stored.sequence + 1:
            raise OSError(
                f"shard {shard}: block {block.sequence} after {stored.sequence} (not contiguous)"
            )
        payload = block.SerializeToString()
        if len(payload) > broker.max_payload:
            raise RelayError(
                f"shard {shard} block {block.sequence} is {len(payload)} bytes, above the "
                f"broker's max_payload {broker.max_payload}"
            )
        headers = {
            SHARD_HEADER: str(shard),
            SEQUENCE_HEADER: str(block.sequence),
            MESSAGE_ID_HEADER: message_id(shard, block.sequence),
            EXPECTED_LAST_HEADER: str(stored.stream_sequence),
        }
        ack = await js.publish(
            self.config.subject(shard), payload, timeout=PUBLISH_TIMEOUT_S, headers=headers
        )
        if ack.duplicate:  # landed earlier without our hearing; the position is its own
            raise OSError(f"shard {shard} block {block.sequence} was stored already")
        positions[shard] = Stored(int(block.sequence), int(ack.seq))
        self.counters.published[shard] = self.counters.published.get(shard, 0) + 1
        if self._on_published is not None:
            self._on_published(shard, int(block.sequence))
