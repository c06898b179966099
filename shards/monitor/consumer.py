"""The monitor's loop: journal blocks from JetStream into the books, alerts out, checkpoints.

Exactly once, across any crash or restart of the monitor, the broker or the relay:

- The books are only ever what a checkpoint holds plus the blocks after it, applied in stream
  order. At start, and after any failure (the broker gone, a publish refused), the monitor
  reloads its last checkpoint and reads the stream again from the message after it: state
  built since the checkpoint is thrown away and rebuilt the same way (Books.apply is
  deterministic).
- Alerts are published to their own stream (TALLY_ALERTS, `tally.alerts.<partition key>`),
  each with its position (`Tally-Position: <stream sequence>.<index>`, also its Nats-Msg-Id)
  and `Nats-Expected-Last-Sequence` (a second monitor racing this one is refused). A block's
  alerts are published, each acknowledged, before the next block is applied; the position of
  the last alert stored is read from the broker at every (re)start and an alert at or before
  it is not published again.
- A checkpoint is written (to a temporary file, fsynced, renamed over the last one) only
  after the alerts of every block it holds are stored, every checkpoint_interval_s or
  checkpoint_block_count blocks and when the monitor stops.

Back-pressure: the monitor fetches at most FETCH_BATCH messages at a time; a slow monitor
falls behind in the broker's stream, never slows the relay or the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from core.flows import rules
from core.flows.model import FlowError
from shards.monitor.books import Books, GapError, PositionedAlert
from shards.monitor.convert import alert_to_proto
from shards.monitor.join import JoinError
from shards.rpc import broker as broker_connection
from tally.v1 import ledger_pb2 as pb

log = logging.getLogger("tally.monitor")

POSITION_HEADER: Final = "Tally-Position"
MESSAGE_ID_HEADER: Final = "Nats-Msg-Id"
EXPECTED_LAST_HEADER: Final = "Nats-Expected-Last-Sequence"
FETCH_BATCH: Final = 256
FETCH_TIMEOUT_S: Final = 1.0
PUBLISH_TIMEOUT_S: Final = 10.0
RETRY_FIRST_S: Final = 0.2
RETRY_MAX_S: Final = 5.0
DUPLICATE_WINDOW_S: Final = 120.0


class MonitorError(RuntimeError):
    """What the monitor cannot go on from (a gap in the stream, a broken checkpoint)."""


@dataclass(frozen=True)
class MonitorConfig:
    nats_url: str
    nats_tls: ssl.SSLContext | None
    checkpoint_path: Path
    journal_stream: str = broker_connection.JOURNAL_STREAM
    journal_subjects: str = broker_connection.JOURNAL_SUBJECTS
    alerts_stream: str = broker_connection.ALERTS_STREAM
    alerts_prefix: str = broker_connection.ALERTS_SUBJECT_PREFIX
    checkpoint_interval_s: float = 5.0
    checkpoint_block_count: int = 10_000


def alert_subject(prefix: str, partition_key: str) -> str:
    """A subject token may not hold '.', ' ', '*' or '>': those of a key are escaped."""
    escaped = "".join(c if c.isalnum() or c in "-_" else f"~{ord(c):x}" for c in partition_key)
    return f"{prefix}.{escaped}"


def position_text(position: tuple[int, int]) -> str:
    return f"{position[0]}.{position[1]}"


def parse_position(text: str) -> tuple[int, int]:
    sequence, _, index = text.partition(".")
    return int(sequence), int(index)


def read_checkpoint(path: Path, rule_set: rules.RuleSet) -> Books:
    """The books of the checkpoint at path, or new books if there is none yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Books(rule_set)
    try:
        return Books.restore(data, rule_set)
    except ValueError as error:
        raise MonitorError(f"checkpoint {path}: {error}") from None


def write_checkpoint(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class Consumer:
    """Runs until stopped; `books` is the state GetFlowProfile reads (replaced on reload)."""

    def __init__(
        self,
        config: MonitorConfig,
        rule_set: rules.RuleSet,
        on_applied: Callable[[Books], None] | None = None,
    ) -> None:
        self.config = config
        self.rule_set = rule_set
        self.books = read_checkpoint(config.checkpoint_path, rule_set)
        self.restarts = 0
        self.last_error = ""
        self.published_alert_count = 0
        self.checkpoint_count = 0
        self.last_checkpoint_s = time.monotonic()
        self.checkpointed_sequence = self.books.stream_sequence
        self.journal_last_sequence = 0  # the broker's, as last seen
        self._on_applied = on_applied
        # True between applying a block and storing its alerts: no checkpoint may be taken.
        self._unsettled = False

    async def run(self, stopping: asyncio.Event) -> None:
        delay_s = RETRY_FIRST_S
        try:
            while not stopping.is_set():
                try:
                    await self._consume_until_failure(stopping)
                    delay_s = RETRY_FIRST_S
                except (GapError, JoinError, FlowError) as error:  # not to be retried
                    raise MonitorError(str(error)) from None
                except (nats.errors.Error, OSError, TimeoutError, DecodeError) as error:
                    self.restarts += 1
                    self.last_error = f"{type(error).__name__}: {error}"
                    log.warning("monitor: %s; reloading the checkpoint", self.last_error)
                    self.books = read_checkpoint(self.config.checkpoint_path, self.rule_set)
                    self._unsettled = False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), timeout=delay_s)
                    delay_s = min(delay_s * 2, RETRY_MAX_S)
        finally:
            if not self._unsettled and self.books.stream_sequence > self.checkpointed_sequence:
                self._checkpoint()

    async def _consume_until_failure(self, stopping: asyncio.Event) -> None:
        broker = await broker_connection.connect(self.config.nats_url, self.config.nats_tls)
        try:
            js = broker.jetstream()
            await self._ensure_alerts_stream(js)
            published = await self._last_alert(js)
            await self._follow(broker, js, published, stopping)
        finally:
            with contextlib.suppress(Exception):
                await broker.close()

    async def _ensure_alerts_stream(self, js: JetStreamContext) -> None:
        subjects = [f"{self.config.alerts_prefix}.>"]
        try:
            info = await js.stream_info(self.config.alerts_stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=self.config.alerts_stream,
                    subjects=subjects,
                    storage=StorageType.FILE,
                    duplicate_window=DUPLICATE_WINDOW_S,
                )
            )
            return
        if list(info.config.subjects or []) != subjects:
            raise MonitorError(
                f"stream {self.config.alerts_stream} holds subjects {info.config.subjects}, "
                f"not {subjects}"
            )

    async def _last_alert(self, js: JetStreamContext) -> tuple[tuple[int, int], int]:
        """The position of the last alert the broker stored and its stream sequence."""
        info = await js.stream_info(self.config.alerts_stream)
        last = int(info.state.last_seq or 0)
        if not last or not info.state.messages:
            return (0, -1), last
        message = await js.get_msg(self.config.alerts_stream, last)
        headers = message.headers or {}
        try:
            return parse_position(headers[POSITION_HEADER]), last
        except (KeyError, ValueError):
            raise MonitorError(
                f"alert message {last} of {self.config.alerts_stream} has no position"
            ) from None

    async def _follow(
        self,
        broker: NatsClient,
        js: JetStreamContext,
        published: tuple[tuple[int, int], int],
        stopping: asyncio.Event,
    ) -> None:
        start = self.books.stream_sequence + 1
        subscription = await js.pull_subscribe(
            self.config.journal_subjects,
            stream=self.config.journal_stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
            ),
        )
        log.info("monitor: reading %s from message %d", self.config.journal_stream, start)
        last_position, alerts_sequence = published
        try:
            while not stopping.is_set():
                try:
                    messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
                except TimeoutError:
                    # Nothing in time. nats-py raises its own TimeoutError, or a bare
                    # asyncio.TimeoutError when its first request's answer is handled after the
                    # whole timeout (a busy loop): neither is a failure of the connection.
                    messages = []
                for message in messages:
                    self._unsettled = True
                    alerts = self._apply(message)
                    for positioned in alerts:
                        if positioned.position <= last_position:
                            continue
                        alerts_sequence = await self._publish(js, positioned, alerts_sequence)
                        last_position = positioned.position
                    self._unsettled = False
                    # Between two blocks, the loop's other work: GetFlowProfile, the metrics
                    # (made on the loop, shards/monitor/server.py) and the broker connection's
                    # own reads. A fetch of FETCH_BATCH blocks held it for seconds.
                    await asyncio.sleep(0)
                if self._checkpoint_due():
                    await self._checkpoint_in_background()
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def _apply(self, message: Any) -> list[PositionedAlert]:
        metadata = message.metadata
        stream_sequence = int(metadata.sequence.stream)
        self.journal_last_sequence = stream_sequence + int(metadata.num_pending or 0)
        block = pb.JournalBlock.FromString(message.data)
        alerts = self.books.apply(stream_sequence, block)
        if self._on_applied is not None:
            self._on_applied(self.books)
        return alerts

    async def _publish(
        self, js: JetStreamContext, positioned: PositionedAlert, last_sequence: int
    ) -> int:
        position = position_text(positioned.position)
        headers = {
            POSITION_HEADER: position,
            MESSAGE_ID_HEADER: f"alert:{position}",
            EXPECTED_LAST_HEADER: str(last_sequence),
        }
        acknowledged = await js.publish(
            alert_subject(self.config.alerts_prefix, positioned.alert.partition_key),
            alert_to_proto(positioned.alert).SerializeToString(),
            timeout=PUBLISH_TIMEOUT_S,
            stream=self.config.alerts_stream,
            headers=headers,
        )
        if acknowledged.duplicate:
            raise OSError(f"alert {position} was already stored: reading the broker again")
        self.published_alert_count += 1
        return int(acknowledged.seq)

    def _checkpoint_due(self) -> bool:
        behind = self.books.stream_sequence - self.checkpointed_sequence
        if behind <= 0:
            return False
        waited_s = time.monotonic() - self.last_checkpoint_s
        return behind >= self.config.checkpoint_block_count or (
            waited_s >= self.config.checkpoint_interval_s
        )

    async def _checkpoint_in_background(self) -> None:
        """The state is taken here, on the loop; only the file's writing goes to a thread."""
        data = self.books.checkpoint()
        sequence = self.books.stream_sequence
        await asyncio.to_thread(write_checkpoint, self.config.checkpoint_path, data)
        self.checkpointed_sequence = sequence
        self.last_checkpoint_s = time.monotonic()
        self.checkpoint_count += 1

    def _checkpoint(self) -> None:
        write_checkpoint(self.config.checkpoint_path, self.books.checkpoint())
        self.checkpointed_sequence = self.books.stream_sequence
        self.last_checkpoint_s = time.monotonic()
        self.checkpoint_count += 1
