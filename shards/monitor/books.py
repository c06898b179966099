"""The monitor's state: the flow engine, the joiner, how far it has read, and its checkpoint.

`Books.apply(stream_sequence, block)` is the whole of what a journal block does to the state;
it is deterministic, so a monitor restarted from a checkpoint and fed the same blocks after it
reaches the same state, byte for byte, and makes the same alerts in the same order. Each alert
has a position (the stream sequence of the block it was made at, its index there): the alert
stream is made exactly once by publishing only the alerts after the last position the broker
holds (shards/monitor/consumer.py).

Alerts are evaluated at the close of each day: when a flow's day is after the engine's, every
borrower is evaluated as of the end of each day from the engine's day to the day before the
flow's (at most DAYS_CLOSED_MAX of them), before the flow is added.

Positions. The stream interleaves the shards' blocks; per shard, blocks must follow each other
(1, 2, 3, ...). A block at or before its shard's position was applied already (a redelivery) and
is skipped; one after the next is a gap, and the monitor refuses to go on (GapError) rather than
make profiles from part of the books.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Final

from core.flows import rules
from core.flows.engine import FlowEngine
from core.flows.model import NS_PER_DAY, EngineConfig, day_of
from shards.monitor.join import Joiner
from tally.v1 import ledger_pb2 as pb

CHECKPOINT_VERSION: Final = 1
DAYS_CLOSED_MAX: Final = 31
"""Days closed (evaluated) at most when the flows' day jumps forward: the last ones."""


class GapError(RuntimeError):
    """A shard's block that does not follow the last one applied."""


@dataclass(frozen=True, slots=True)
class PositionedAlert:
    stream_sequence: int
    index: int
    alert: rules.Alert

    @property
    def position(self) -> tuple[int, int]:
        return (self.stream_sequence, self.index)


def end_of_day_ns(day: int) -> int:
    return (day + 1) * NS_PER_DAY - 1


class Books:
    def __init__(self, rule_set: rules.RuleSet, config: EngineConfig | None = None) -> None:
        self.rule_set = rule_set
        self.engine = FlowEngine(config)
        self.joiner = Joiner()
        self.stream_sequence = 0  # of the last block applied
        self.positions: dict[int, int] = {}  # shard -> journal sequence of its last block
        self.block_count = 0
        self.posting_count = 0
        self.alert_count = 0

    def apply(self, stream_sequence: int, block: pb.JournalBlock) -> list[PositionedAlert]:
        """Applies one block (the message at stream_sequence); the alerts it made."""
        if stream_sequence <= self.stream_sequence:
            return []  # redelivered
        shard = int(block.shard_id)
        last = self.positions.get(shard, 0)
        if block.sequence <= last:
            self.stream_sequence = stream_sequence
            return []
        if block.sequence != last + 1:
            raise GapError(
                f"shard {shard}: block {block.sequence} follows block {last} (stream message "
                f"{stream_sequence}); the stream lost blocks"
            )
        content = self.joiner.add_block(block)
        alerts: list[PositionedAlert] = []
        for info in content.accounts:
            self.engine.add_account(info)
        for flow in content.flows:
            day = day_of(flow.timestamp_ns)
            if self.engine.day is not None and day > self.engine.day:
                for closed in range(max(self.engine.day, day - DAYS_CLOSED_MAX), day):
                    for alert in self.engine.evaluate(self.rule_set, end_of_day_ns(closed)):
                        alerts.append(PositionedAlert(stream_sequence, len(alerts), alert))
            self.engine.add_flow(flow)
        for account_id in content.closures:
            self.engine.forget_account(account_id)
        self.positions[shard] = int(block.sequence)
        self.stream_sequence = stream_sequence
        self.block_count += 1
        self.posting_count += len(block.postings)
        self.alert_count += len(alerts)
        return alerts

    # ---- checkpoints ----

    def checkpoint(self) -> bytes:
        """The whole state, canonical JSON (the engine's snapshot inside, base64)."""
        state = {
            "version": CHECKPOINT_VERSION,
            "stream_sequence": self.stream_sequence,
            "positions": {str(s): n for s, n in sorted(self.positions.items())},
            "counts": [self.block_count, self.posting_count, self.alert_count],
            "joiner": self.joiner.state(),
            "engine": base64.b64encode(self.engine.snapshot()).decode(),
        }
        return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def restore(data: bytes, rule_set: rules.RuleSet) -> Books:
        """The books a checkpoint was made of; ValueError naming what is wrong."""
        try:
            state: dict[str, Any] = json.loads(data)
            if state.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"not a version {CHECKPOINT_VERSION} monitor checkpoint")
            books = Books(rule_set)
            books.engine = FlowEngine.restore(base64.b64decode(state["engine"], validate=True))
            books.joiner = Joiner.restore(state["joiner"])
            books.stream_sequence = int(state["stream_sequence"])
            books.positions = {int(s): int(n) for s, n in state["positions"].items()}
            books.block_count, books.posting_count, books.alert_count = (
                int(n) for n in state["counts"]
            )
            return books
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
            raise ValueError(f"not a monitor checkpoint: {error!r}") from None
