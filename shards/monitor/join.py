"""From journal blocks to what the flow engine reads: accounts, closures and client flows.

A shard's block holds the records it created and their postings. The money a client
transaction moved is its postings' posted amounts (a hold's pending amounts move nothing until
posted), on the accounts they name, in the currency of the record that made them. A record a
shard writes itself wraps the client's id (core.ids): a participant's piece posted as its
coordinator decided is `~commit/~piece/<attempt>/<T>`, whose postings are T's money on that
shard. So the postings of every shard are grouped by the client id they resolve to, and the
clearing legs (`@clearing/<CURRENCY>`, the inter-shard balancing) are left out.

When a client transaction is whole (`Joiner.add_block` returns it once, then forgets it):

- a single-shard transaction: in its own block, at once;
- a cross-shard transaction whose coordinator recorded its attempt's other shards
  (CrossShardPiece.participant_shards): once the coordinator's record and each of those
  shards' `~commit/~piece/...` records have arrived, in whatever order the shards' streams
  interleave (for a cross-shard hold's post or void: as many shards' settlements as the hold
  has pieces, since a held piece moves with its accounts' slots);
- a cross-shard one without that record (a hold's post decided at the hold's coordinator,
  pieces committed before the shards were recorded): once the client's record and at least one
  participant's posted piece have arrived and its clearing legs net to zero in every currency.
  A share of it that is balanced without clearing legs can then make it whole early; the rest
  is counted (`split_count`) and arrives as a flow of its own with the same id.

A flow is dated by its client record: its value date (midnight UTC) when it has one, not
later than the day after its commit (a later one is counted and dated by the commit), else its
commit time. Its legs are summed per (account, side, currency) and sorted, so a flow does not
depend on the order the shards' pieces arrive in.

The joiner's state (the transactions not whole yet) is part of the monitor's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from core import ids
from core.flows.model import NS_PER_DAY, AccountInfo, Flow, day_of, day_of_date
from core.model import Leg
from tally.v1 import ledger_pb2 as pb

STATE_VERSION: Final = 1
RESOLUTION_KEY: Final = "resolution"
"""On a participant's settlement of a cross-shard hold's piece: the client's post or void
(core.pieces.hold_settlement_spec)."""
PENDING_COUNT_MAX: Final = 1_000_000
"""Client transactions waiting for their other pieces at once; past it the joiner refuses the
stream (JoinError) rather than grow without bound: a shard's stream stopped long ago."""


class JoinError(RuntimeError):
    """The stream cannot be joined as it is (the message says why)."""


def client_id(transaction_id: str) -> str | None:
    """The client transaction whose money a record's postings are, or None (an abort marker,
    a mark, a deadline: records that post nothing)."""
    identifier = transaction_id
    while ids.is_reserved(identifier):
        parts = ids.readable_parts(identifier)
        if parts is None:
            return None
        attempt, inner = parts
        if attempt is not None and not ids.is_piece_id(identifier):
            return None  # an abort marker
        identifier = inner
    return identifier or None


def canonical_legs(amounts: dict[tuple[str, bool, str], int]) -> tuple[Leg, ...]:
    """Legs summed per (account, side, currency), sorted: debits first within an account."""
    return tuple(
        Leg(account, is_debit, amount, currency)
        for (account, is_debit, currency), amount in sorted(
            amounts.items(), key=lambda item: (item[0][0], not item[0][1], item[0][2])
        )
        if amount
    )


def flow_day_ns(value_date: str, commit_ns: int) -> tuple[int, bool]:
    """When a flow happened for its profile, and whether a value date was set aside for
    being after the day after its commit."""
    if not value_date:
        return commit_ns, False
    try:
        day = day_of_date(value_date)
    except ValueError:  # the ledger validates value dates: not reached
        return commit_ns, True
    if day > day_of(commit_ns) + 1:
        return commit_ns, True
    return day * NS_PER_DAY, False


@dataclass
class _Record:
    """What the client's record of a transaction says (the coordinator's, if cross-shard)."""

    timestamp_ns: int
    code: int
    metadata: tuple[tuple[str, str], ...]
    value_date: str
    cross_shard: bool
    participants: tuple[int, ...]
    decides_hold: bool = False  # the post or void of a cross-shard hold


@dataclass
class _Pending:
    amounts: dict[tuple[str, bool, str], int] = field(default_factory=dict)
    clearing: dict[str, int] = field(default_factory=dict)  # currency -> debits - credits
    record: _Record | None = None
    committed_shards: set[int] = field(default_factory=set)  # its pieces posted there
    settled_shards: set[int] = field(default_factory=set)  # a hold's pieces settled by it

    def whole(self) -> bool:
        record = self.record
        if record is None:
            return False
        if not record.cross_shard:
            return True
        if record.decides_hold and record.participants:
            # A held piece moves with its accounts' slots (docs/design.md, "Moving slots"), so
            # it may settle elsewhere than where the hold was made: one shard per piece still.
            return len(self.settled_shards) >= len(record.participants)
        shards = self.settled_shards if record.decides_hold else self.committed_shards
        if record.participants:
            return shards.issuperset(record.participants)
        return bool(shards) and not any(self.clearing.values())


@dataclass(frozen=True, slots=True)
class BlockContent:
    """What one block gives the engine, in the order it is to be applied."""

    accounts: tuple[AccountInfo, ...]
    flows: tuple[Flow, ...]
    closures: tuple[str, ...]


@dataclass
class JoinCounters:
    flow_count: int = 0
    split_count: int = 0  # parts that came after their transaction was made whole
    future_value_date_count: int = 0
    unattributed_posting_count: int = 0  # posted money of no client transaction (not expected)


class Joiner:
    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        # Open cross-shard holds recorded here as coordinator: id -> the shards of their pieces.
        self._cross_holds: dict[str, tuple[int, ...]] = {}
        self._emitted_recently: dict[str, None] = {}  # bounded: for split_count only
        self.counters = JoinCounters()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def add_block(self, block: pb.JournalBlock) -> BlockContent:
        accounts = tuple(_account_info(created.account) for created in block.accounts)
        currencies = _currencies_of(block)
        owners: dict[str, str] = {}  # a hold piece's settlement -> the client's post or void
        touched: list[str] = []
        for record in block.transactions:
            self._note_record(int(block.shard_id), record, touched, owners)
        for posting in block.postings:
            if posting.posted_amount:
                self._note_posting(posting, currencies, touched, owners)
        flows = []
        for key in dict.fromkeys(touched):
            pending = self._pending.get(key)
            if pending is not None and pending.whole():
                del self._pending[key]
                flow = self._flow(key, pending)
                if flow is not None:
                    flows.append(flow)
        if len(self._pending) > PENDING_COUNT_MAX:
            raise JoinError(
                f"{len(self._pending)} cross-shard transactions wait for pieces of other "
                f"shards (at most {PENDING_COUNT_MAX}): is a shard's stream missing?"
            )
        closures = tuple(closure.account_id for closure in block.closures)
        return BlockContent(accounts, tuple(flows), closures)

    def _note_record(
        self, shard_id: int, record: Any, touched: list[str], owners: dict[str, str]
    ) -> None:
        transaction = record.transaction
        identifier = transaction.id
        if not ids.is_reserved(identifier):
            self._note_client_record(record, touched)
            return
        if identifier.startswith("~expired/"):  # a cross-shard hold expired: no post to come
            self._cross_holds.pop(identifier.removeprefix("~expired/"), None)
            return
        resolution = transaction.metadata.get(RESOLUTION_KEY, "")
        if resolution and identifier.startswith(("~commit/~piece/", "~void/~piece/")):
            # A participant's piece of a cross-shard hold, posted or voided by the client's
            # resolution: its postings are the resolution's money on this shard.
            owners[identifier] = resolution
            self._pending_of(resolution).settled_shards.add(shard_id)
            touched.append(resolution)
            return
        parts = ids.readable_parts(identifier)
        if parts is None or parts[0] is not None or not identifier.startswith("~commit/"):
            return
        inner = parts[1]
        if ids.is_piece_id(inner):
            key = ids.parse_piece_id(inner)[0]
            self._pending_of(key).committed_shards.add(shard_id)
            touched.append(key)

    def _note_client_record(self, record: Any, touched: list[str]) -> None:
        """A client's record: a single-shard transaction, a cross-shard one's coordinator
        record, a cross-shard hold (its post or void decided later, at its coordinator, with
        fate pieces on the shards of its pieces) or such a hold's post or void."""
        transaction = record.transaction
        piece = record.cross_shard_piece if record.HasField("cross_shard_piece") else None
        coordinator = piece is not None and piece.coordinator
        participants = tuple(sorted(piece.participant_shards)) if piece and coordinator else ()
        if transaction.pending:  # a hold moves no money itself
            if coordinator:
                self._cross_holds[transaction.id] = participants
            coordinator, participants = False, ()
        decided = transaction.post_pending_id or transaction.void_pending_id
        decides_hold = decided in self._cross_holds
        if decides_hold:
            coordinator, participants = True, self._cross_holds.pop(decided)
        pending = self._pending_of(transaction.id)
        pending.record = _Record(
            int(record.timestamp_ns),
            int(transaction.code),
            tuple(sorted(transaction.metadata.items())),
            transaction.value_date,
            coordinator,
            participants,
            decides_hold,
        )
        touched.append(transaction.id)

    def _note_posting(
        self,
        posting: Any,
        currencies: dict[tuple[str, str], str],
        touched: list[str],
        owners: dict[str, str],
    ) -> None:
        key = owners.get(posting.transaction_id) or client_id(posting.transaction_id)
        currency = currencies.get((posting.transaction_id, posting.account_id))
        if key is None or currency is None:
            self.counters.unattributed_posting_count += 1
            return
        pending = self._pending_of(key)
        is_debit = posting.side == pb.SIDE_DEBIT
        amount = int(posting.posted_amount)
        if ids.is_clearing(posting.account_id):
            signed = amount if is_debit else -amount
            pending.clearing[currency] = pending.clearing.get(currency, 0) + signed
        else:
            leg = (posting.account_id, is_debit, currency)
            pending.amounts[leg] = pending.amounts.get(leg, 0) + amount
        touched.append(key)

    def _pending_of(self, key: str) -> _Pending:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
            if key in self._emitted_recently:
                self.counters.split_count += 1
        return pending

    def _flow(self, key: str, pending: _Pending) -> Flow | None:
        record = pending.record
        assert record is not None, "whole() needs the record"
        self._emitted_recently[key] = None
        if len(self._emitted_recently) > 10_000:
            del self._emitted_recently[next(iter(self._emitted_recently))]
        legs = canonical_legs(pending.amounts)
        if not legs:  # a hold, a void, a transaction with no money here
            return None
        timestamp_ns, set_aside = flow_day_ns(record.value_date, record.timestamp_ns)
        self.counters.future_value_date_count += set_aside
        self.counters.flow_count += 1
        return Flow(key, timestamp_ns, record.code, record.metadata, legs)

    # ---- checkpoints ----

    def state(self) -> dict[str, object]:
        return {
            "version": STATE_VERSION,
            "pending": {key: _pending_json(p) for key, p in sorted(self._pending.items())},
            "holds": {key: list(shards) for key, shards in sorted(self._cross_holds.items())},
            "recent": list(self._emitted_recently),
            "counters": [
                self.counters.flow_count,
                self.counters.split_count,
                self.counters.future_value_date_count,
                self.counters.unattributed_posting_count,
            ],
        }

    @staticmethod
    def restore(state: dict[str, Any]) -> Joiner:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"not a version {STATE_VERSION} joiner state")
        joiner = Joiner()
        joiner._pending = {key: _pending_of_json(value) for key, value in state["pending"].items()}
        joiner._cross_holds = {
            str(key): tuple(int(s) for s in shards) for key, shards in state["holds"].items()
        }
        joiner._emitted_recently = dict.fromkeys(str(key) for key in state["recent"])
        joiner.counters = JoinCounters(*(int(n) for n in state["counters"]))
        return joiner


def _currencies_of(block: pb.JournalBlock) -> dict[tuple[str, str], str]:
    """(record id, account) -> currency, from the block's records' applied legs (a posting
    names its account, not its currency; its record's legs do)."""
    found: dict[tuple[str, str], str] = {}
    for record in block.transactions:
        for leg in record.applied_legs:
            found[(record.transaction.id, leg.account_id)] = leg.currency
    return found


def _account_info(account: Any) -> AccountInfo:
    return AccountInfo(
        account.id, account.currency, int(account.code), tuple(sorted(account.metadata.items()))
    )


def _pending_json(pending: _Pending) -> dict[str, object]:
    record = pending.record
    return {
        "amounts": [[a, d, c, n] for (a, d, c), n in sorted(pending.amounts.items())],
        "clearing": dict(sorted(pending.clearing.items())),
        "record": None
        if record is None
        else [
            record.timestamp_ns,
            record.code,
            [list(item) for item in record.metadata],
            record.value_date,
            record.cross_shard,
            list(record.participants),
            record.decides_hold,
        ],
        "committed": sorted(pending.committed_shards),
        "settled": sorted(pending.settled_shards),
    }


def _pending_of_json(value: dict[str, Any]) -> _Pending:
    encoded = value["record"]
    record = None
    if encoded is not None:
        timestamp_ns, code, metadata, value_date, cross_shard, participants, decides = encoded
        record = _Record(
            int(timestamp_ns),
            int(code),
            tuple((str(k), str(v)) for k, v in metadata),
            str(value_date),
            bool(cross_shard),
            tuple(int(s) for s in participants),
            bool(decides),
        )
    return _Pending(
        {(str(a), bool(d), str(c)): int(n) for a, d, c, n in value["amounts"]},
        {str(c): int(n) for c, n in value["clearing"].items()},
        record,
        {int(s) for s in value["committed"]},
        {int(s) for s in value["settled"]},
    )
