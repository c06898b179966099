"""The journal pass: one walk over a shard's journal in block order, merging its five ordered
streams (blocks, accounts, transactions, postings, closures) to check the hash chain, each
block's structure and each transaction's postings; then the writer lease and the anchors."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from core import journal, signing
from core.audit.accounts import report_chain_break
from core.audit.cold import ColdJournal, line_of, posting_row, transaction_row
from core.audit.cold_crossshard import is_candidate
from core.audit.export import block_hash, journal_line
from core.audit.findings import About, AuditConfig, FindingKind, FindingLog, Progress, ShardReport
from core.audit.postings import check_transaction_postings, posting_ids
from core.audit.source import RowStream
from core.model import HELD_KINDS, Kind
from core.store import audit as queries
from core.store.audit import P_BLOCK, P_SEQUENCE, P_TRANSACTION, T_APPLIED, T_ID, T_KIND, T_TARGET
from core.store.cold.audit_read import SEGMENT_READ_ERRORS, cold_records
from core.store.cold.format import ColdBlock, ColdTransaction

# ---- the journal pass: hash chain, block structure, postings against transactions ----


def _hex(digest: bytes) -> str:
    # Whole: an auditor compares hashes with other records, which a prefix would not allow.
    return digest.hex()


@dataclass(slots=True)
class _HashMismatch:
    block: int
    stored: bytes
    recomputed: bytes


class JournalPass:
    """One pass over the journal in block order, merging five ordered streams."""

    def __init__(
        self,
        connection: Any,
        config: AuditConfig,
        log: FindingLog,
        report: ShardReport,
        progress: Progress | None,
        posting_total: int,
        cold: ColdJournal | None = None,
    ) -> None:
        self.connection = connection
        # The cold blocks' records (their transactions and postings), from their segments.
        self.cold = cold
        self.config = config
        self.log = log
        self.report = report
        self.progress = progress
        self.posting_total = posting_total
        self.previous_block = 0
        self.previous_stored = journal.GENESIS_HASH
        self.previous_recomputed = journal.GENESIS_HASH
        self.previous_epoch = 0
        self.next_posting = 1
        self.suspect: _HashMismatch | None = None
        # Open holds seen so far: id -> applied legs text (bounded, oldest dropped first).
        self.holds: OrderedDict[str, str] = OrderedDict()
        # Signatures: checked when verify keys are given; runs of unsigned blocks are one
        # finding each, reported when the run ends.
        keys = config.verify_keys
        self.verifier = signing.Verifier(keys) if keys else None
        self.last_signed = 0
        self.unsigned_from = 0
        self.published = {
            head.block: head.hash_hex for head in config.published_heads if head.shard == log.shard
        }

    async def _open(self, sql: str) -> RowStream:
        return await RowStream.open(
            self.connection, sql, self.config.fetch_row_count, self.config.statement_timeout_s
        )

    async def run(self) -> None:
        blocks = await self._open(queries.BLOCKS_SQL)
        self.streams = {
            "accounts": await self._open(queries.ACCOUNTS_SQL),
            "transactions": await self._open(queries.TRANSACTIONS_SQL),
            "closures": await self._open(queries.CLOSURES_SQL),
        }
        self.postings = await self._open(queries.POSTINGS_SQL)
        await self._check_revived()
        while headers := await blocks.rest():
            for header in headers:
                await self._block(header)
            self._report_progress()
        if self.suspect is not None:
            self._report_mismatch(self.suspect, None)
        self._end_unsigned_run(self.previous_block)
        self._report_unpublished()
        await self._finish_streams()
        self._report_progress()

    def _report_progress(self) -> None:
        if self.progress is not None:
            # With cold history most postings are not rows: count the sequences walked.
            done = self.postings.consumed if self.cold is None else self.next_posting - 1
            self.progress(self.log.shard, "journal", done, max(done, self.posting_total))

    async def _block(self, header: Any) -> None:
        block = header["sequence"]
        self._check_header(header)
        rows = {}
        for name, stream in self.streams.items():
            rows[name] = self._own_rows(name, block, await stream.take_below(0, block + 1))
        postings = await self.postings.take_below(P_SEQUENCE, header["next_posting_sequence"])
        if self.cold is not None and block <= self.cold.last_block:
            cold = await self.cold.block(block, self.log)
            if cold is None:  # its segment cannot be read (a finding): the chain goes on
                self._skip_block(header)
                return
            rows["transactions"] = self._cold_transactions(block, cold, rows["transactions"])
            postings = self._cold_postings(block, cold, postings)
        self._check_posting_range(header, postings)
        self._check_counts(header, rows, postings)
        self._check_hash(header, rows, postings)
        self._check_signature(header)
        self._check_published(header)
        await self._check_postings(block, rows["transactions"], postings)
        self._count_block(header, len(rows["transactions"]), len(postings))

    def _count_block(self, header: Any, transactions: int, postings: int) -> None:
        self.report.block_count += 1
        self.report.transaction_count += transactions
        self.report.posting_count += postings
        self.report.head_block = header["sequence"]
        self.report.head_hash = bytes(header["hash"]).hex()

    # ---- cold blocks (core.audit.cold) ----

    def _skip_block(self, header: Any) -> None:
        """A cold block whose segment cannot be read: its header carries the chain on."""
        if self.suspect is not None:
            self._report_mismatch(self.suspect, bytes(header["previous_hash"]))
            self.suspect = None
        self.previous_stored = self.previous_recomputed = bytes(header["hash"])
        self.next_posting = max(self.next_posting, header["next_posting_sequence"])
        self._check_signature(header)
        self._check_published(header)
        self._count_block(header, header["transaction_count"], header["posting_count"])

    def _cold_transactions(self, block: int, cold: ColdBlock, hot: list[Any]) -> list[Any]:
        """The block's transactions as its segment holds them; each row it kept hot must be
        one of them (its current state, the same line)."""
        assert self.cold is not None
        rows = [transaction_row(block, record) for record in cold.transactions]
        self.cold.cross_shard.extend((block, r) for r in cold.transactions if is_candidate(r))
        by_id = {row[T_ID]: row for row in rows}
        for row in hot:
            held = by_id.get(row[T_ID])
            if held is None or line_of(held[1:]) != line_of(row[1:]):
                found = "differs from" if held is not None else "is not in"
                self.log.add(
                    FindingKind.SEGMENT_DATABASE_MISMATCH,
                    About.TRANSACTION,
                    f"its row in the database {found} the record of cold block {block}",
                    line_of(held[1:]) if held is not None else "no row",
                    line_of(row[1:]),
                    block=block,
                    transaction_id=row[T_ID],
                )
        return rows

    def _cold_postings(self, block: int, cold: ColdBlock, hot: list[Any]) -> list[Any]:
        """The block's postings as its segment holds them, counted into the cold totals; each
        posting it kept hot (a slot move's block) must be one of them."""
        assert self.cold is not None
        rows = []
        for posting in cold.postings:
            rows.append(posting_row(block, posting))
            if (broken := self.cold.totals.add(posting)) is not None:
                report_chain_break(self.log, broken)
        by_sequence = {row[P_SEQUENCE]: row for row in rows}
        for row in hot:
            held = by_sequence.get(row[P_SEQUENCE])
            if held is None or line_of(held[:P_BLOCK]) != line_of(row[:P_BLOCK]):
                self.log.add(
                    FindingKind.SEGMENT_DATABASE_MISMATCH,
                    About.POSTING,
                    f"its row in the database differs from the record of cold block {block}",
                    line_of(held[:P_BLOCK]) if held is not None else "no posting",
                    line_of(row[:P_BLOCK]),
                    block=block,
                    **posting_ids(row),
                )
        return rows

    async def _check_revived(self) -> None:
        """Revived rows (block 0): each must be a cold record, but for its state."""
        stream = await self._open(queries.REVIVED_SQL)
        while rows := await stream.rest():
            if self.cold is None:
                for row in rows:
                    self._orphan("transactions", row)
                continue
            ids = [row[T_ID] for row in rows]
            try:
                records = await cold_records(
                    self.connection,
                    self.cold.root,
                    self.cold.shard,
                    ids,
                    self.config.statement_timeout_s,
                )
            except SEGMENT_READ_ERRORS as error:
                self.log.add(
                    FindingKind.SEGMENT_ALTERED,
                    About.SEGMENT,
                    f"the cold records of revived transactions cannot be read ({error})",
                )
                continue
            for row in rows:
                self._check_revived_row(row, records.get(row[T_ID]))

    def _check_revived_row(self, row: Any, held: tuple[ColdTransaction, int, str] | None) -> None:
        if held is None:
            self.log.add(
                FindingKind.ROW_OUTSIDE_JOURNAL,
                About.TRANSACTION,
                "revived (block 0), but no cold segment records it",
                transaction_id=row[T_ID],
            )
            return
        record, block, name = held
        expected = line_of(transaction_row(block, record)[1:])
        if expected != line_of(row[1:]):
            self.log.add(
                FindingKind.SEGMENT_DATABASE_MISMATCH,
                About.TRANSACTION,
                f"revived (block 0), but its row differs from its record in cold block {block} "
                f"(segment {name})",
                expected,
                line_of(row[1:]),
                block=block,
                transaction_id=row[T_ID],
            )

    def _own_rows(self, name: str, block: int, rows: list[Any]) -> list[Any]:
        """A block's rows; rows left behind name a block that is not in the journal."""
        own = []
        for row in rows:
            if row[0] == block:
                own.append(row)
            else:
                self._orphan(name, row)
        return own

    def _orphan(self, name: str, row: Any) -> None:
        kind, block = FindingKind.ROW_OUTSIDE_JOURNAL, row[0]
        message = f"recorded in block {block}, which is not in the journal"
        if name == "transactions":
            self.log.add(
                kind,
                About.TRANSACTION,
                f"block {block} is not in the journal",
                block=block,
                transaction_id=row[1],
            )
        elif name == "accounts":
            self.log.add(kind, About.ACCOUNT, message, block=block, account_id=row[1])
        else:
            self.log.add(kind, About.CLOSURE, message, block=block, account_id=row[1])

    def _check_header(self, header: Any) -> None:
        block = header["sequence"]
        expected = self.previous_block + 1
        if block != expected:
            self.log.add(
                FindingKind.BLOCK_MISSING,
                About.BLOCK if block == expected + 1 else About.BLOCKS,
                f"missing from the journal (block {self.previous_block} is followed by "
                f"block {block})",
                expected,
                block,
                block=expected,
                block_last=block - 1,
            )
        if header["epoch"] < self.previous_epoch:
            self.log.add(
                FindingKind.EPOCH_DECREASED,
                About.BLOCK,
                f"epoch {header['epoch']} is below block {self.previous_block}'s "
                f"{self.previous_epoch} (writer epochs only grow)",
                f">= {self.previous_epoch}",
                header["epoch"],
                block=block,
            )
        self.previous_block = block
        self.previous_epoch = header["epoch"]

    def _check_posting_range(self, header: Any, postings: list[Any]) -> None:
        block = header["sequence"]
        end = header["next_posting_sequence"]
        expected = self.next_posting
        if end < expected:
            self.log.add(
                FindingKind.POSTING_RANGE_BACKWARDS,
                About.BLOCK,
                f"next_posting_sequence {end} is below the block before's {expected}",
                f">= {expected}",
                end,
                block=block,
            )
        for row in postings:
            sequence = row[P_SEQUENCE]
            if sequence > expected:
                self._missing_postings(block, expected, sequence)
            if row[P_BLOCK] != block:
                self.log.add(
                    FindingKind.POSTING_IN_WRONG_BLOCK,
                    About.POSTING,
                    f"block_sequence {row[P_BLOCK]}, but its sequence lies in block {block} "
                    f"(postings {self.next_posting}..{end - 1})",
                    block,
                    row[P_BLOCK],
                    block=block,
                    **posting_ids(row),
                )
            expected = sequence + 1
        if expected < end:
            self._missing_postings(block, expected, end)
        self.next_posting = max(end, expected)

    def _missing_postings(self, block: int, first: int, end: int) -> None:
        which = f"posting {first}" if end == first + 1 else f"postings {first}..{end - 1}"
        self.log.add(
            FindingKind.POSTING_MISSING,
            About.BLOCK,
            f"{which} missing (sequence gap)",
            which,
            "",
            block=block,
            posting=first,
        )

    def _check_counts(self, header: Any, rows: dict[str, list[Any]], postings: list[Any]) -> None:
        found = {
            "account_count": len(rows["accounts"]),
            "transaction_count": len(rows["transactions"]),
            "posting_count": len(postings),
            "closure_count": len(rows["closures"]),
        }
        for name, count in found.items():
            if header[name] != count:
                self.log.add(
                    FindingKind.BLOCK_COUNT_MISMATCH,
                    About.BLOCK,
                    f"{name} {header[name]} in its header, but {count} rows found",
                    header[name],
                    count,
                    block=header["sequence"],
                )

    def _check_hash(self, header: Any, rows: dict[str, list[Any]], postings: list[Any]) -> None:
        block = header["sequence"]
        stored = bytes(header["hash"])
        previous_field = bytes(header["previous_hash"])
        if self.suspect is not None:
            self._report_mismatch(self.suspect, previous_field)
            self.suspect = None
        lines = [journal_line("A", row[1:]) for row in rows["accounts"]]
        lines += [journal_line("T", row[1:]) for row in rows["transactions"]]
        lines += [journal_line("P", row[:P_BLOCK]) for row in postings]
        lines += [journal_line("X", row[1:]) for row in rows["closures"]]
        recomputed = block_hash(previous_field, block, lines)
        if previous_field not in (self.previous_stored, self.previous_recomputed):
            recomputed = self._broken_link(block, previous_field, stored, recomputed, lines)
        if recomputed != stored:
            self.suspect = _HashMismatch(block, stored, recomputed)
        self.previous_stored = stored
        self.previous_recomputed = recomputed

    def _broken_link(
        self, block: int, previous_field: bytes, stored: bytes, recomputed: bytes, lines: list[str]
    ) -> bytes:
        """previous_hash is not the hash of the block before: was the field altered, or is the
        block before not the one this block was chained to? Returns the hash to carry on with."""
        expected = _hex(self.previous_stored)
        kind = FindingKind.PREVIOUS_HASH_MISMATCH
        message = f"previous_hash {_hex(previous_field)} is not block {block - 1}'s hash {expected}"
        if recomputed != stored:
            from_before = block_hash(self.previous_stored, block, lines)
            if from_before == stored:
                # The block was hashed onto the block before as stored: only the field changed.
                kind = FindingKind.PREVIOUS_HASH_ALTERED
                message = (
                    f"previous_hash {_hex(previous_field)} was altered: the block's hash was "
                    f"made from block {block - 1}'s hash {expected}"
                )
                recomputed = from_before
        self.log.add(kind, About.BLOCK, message, expected, _hex(previous_field), block=block)
        return recomputed

    # ---- signatures and published heads ----

    def _check_signature(self, header: Any) -> None:
        """The head's signature over (shard, block, hash, key id): the hash chain proves the
        rows make the hashes; the signature proves the writer's key made the head."""
        block, key_id, signature = header["sequence"], header["key_id"], bytes(header["signature"])
        if not key_id and not signature:
            self.unsigned_from = self.unsigned_from or block
            return
        self._end_unsigned_run(block - 1)
        self.last_signed = block
        if self.verifier is None:
            return
        hash_ = bytes(header["hash"])
        problem = self.verifier.problem(self.log.shard, block, hash_, key_id, signature)
        if not problem:
            return
        kind = FindingKind.BLOCK_SIGNATURE_INVALID
        if key_id not in self.verifier.keys:
            kind = FindingKind.BLOCK_SIGNED_BY_UNKNOWN_KEY
        self.log.add(kind, About.BLOCK, problem, "a valid signature", key_id, block=block)

    def _end_unsigned_run(self, last: int) -> None:
        """Blocks first..last were unsigned: a finding when verify keys are given, or when a
        signed block came before them (a writer that lost its key, or signatures stripped)."""
        first, self.unsigned_from = self.unsigned_from, 0
        if not first or (self.verifier is None and not self.last_signed):
            return
        after = f", after block {self.last_signed}, which was signed" if self.last_signed else ""
        self.log.add(
            FindingKind.BLOCK_UNSIGNED,
            About.BLOCK if first == last else About.BLOCKS,
            f"unsigned (no key id, no signature){after}",
            "signed",
            "unsigned",
            block=first,
            block_last=last,
        )

    def _check_published(self, header: Any) -> None:
        block = header["sequence"]
        published = self.published.pop(block, None)
        stored = bytes(header["hash"]).hex()
        if published is not None and published != stored:
            self.log.add(
                FindingKind.PUBLISHED_HEAD_MISMATCH,
                About.BLOCK,
                f"hash {stored}, but its published head records {published}: the block was "
                "rewritten after its head was published",
                published,
                stored,
                block=block,
            )

    def _report_unpublished(self) -> None:
        """Published heads of blocks the journal does not have: it was cut back or lost them."""
        if not self.published:
            return
        blocks = sorted(self.published)
        first, last = blocks[0], blocks[-1]
        self.log.add(
            FindingKind.PUBLISHED_HEAD_MISSING,
            About.BLOCK if first == last else About.BLOCKS,
            f"{len(blocks)} published head(s) name blocks the journal does not have (its last "
            f"block is {self.previous_block})",
            f"{len(blocks)} blocks",
            "missing",
            block=first,
            block_last=last,
        )

    def _report_mismatch(self, mismatch: _HashMismatch, next_previous: bytes | None) -> None:
        """Tell an altered hash from altered rows by the next block's previous_hash."""
        block = mismatch.block
        stored, recomputed = _hex(mismatch.stored), _hex(mismatch.recomputed)
        if next_previous == mismatch.recomputed:
            kind = FindingKind.BLOCK_HASH_ALTERED
            message = (
                f"hash {stored} was altered: its rows give {recomputed}, which block "
                f"{block + 1}'s previous_hash also records"
            )
        elif next_previous == mismatch.stored:
            kind = FindingKind.BLOCK_ROWS_ALTERED
            message = (
                f"hash {stored} does not match its rows (recomputed {recomputed}): its rows "
                "were changed after it was written"
            )
        else:
            kind = FindingKind.BLOCK_HASH_MISMATCH
            message = f"hash {stored} does not match its rows (recomputed {recomputed})"
        if self.cold is not None and (name := self.cold.segment_of(block)):
            message += f"; its transactions and postings are cold, in segment {name}"
        self.log.add(kind, About.BLOCK, message, recomputed, stored, block=block)

    async def _check_postings(
        self, block: int, transactions: list[Any], postings: list[Any]
    ) -> None:
        by_transaction: dict[str, list[Any]] = {}
        for row in postings:
            by_transaction.setdefault(row[P_TRANSACTION], []).append(row)
        held = await self._held_legs(transactions)
        for transaction in transactions:
            actual = by_transaction.pop(transaction[T_ID], [])
            check_transaction_postings(self.log, block, transaction, actual, held)
        for transaction_id, rows in by_transaction.items():
            for row in rows:
                self.log.add(
                    FindingKind.POSTING_WITHOUT_TRANSACTION,
                    About.POSTING,
                    f"transaction {transaction_id} is not recorded in block {block}",
                    block=block,
                    **posting_ids(row),
                )

    async def _held_legs(self, transactions: list[Any]) -> dict[str, str]:
        """Applied legs of the holds this block's partial or full posts resolve."""
        held: dict[str, str] = {}
        missing: list[str] = []
        for row in transactions:
            kind = row[T_KIND]
            if kind in HELD_KINDS:
                self.holds[row[T_ID]] = row[T_APPLIED]
                if len(self.holds) > self.config.hold_cache_count_max:
                    self.holds.popitem(last=False)
            elif kind in (Kind.POST_PENDING, Kind.VOID_PENDING, Kind.EXPIRY):
                legs = self.holds.pop(row[T_TARGET], None)
                if legs is not None:
                    held[row[T_TARGET]] = legs
                elif kind == Kind.POST_PENDING:
                    missing.append(row[T_TARGET])
        if missing:
            for found in await self.connection.fetch(
                queries.HELD_LEGS_SQL,
                missing,
                sorted(int(kind) for kind in HELD_KINDS),
                timeout=self.config.statement_timeout_s,
            ):
                held[found["id"]] = found["applied_legs"]
        return held

    async def _finish_streams(self) -> None:
        """Rows after the journal's last block: forged, or of blocks that were deleted."""
        for name, stream in self.streams.items():
            while rows := await stream.rest():
                for row in rows:
                    self._orphan(name, row)
        while rows := await self.postings.rest():
            for row in rows:
                self.log.add(
                    FindingKind.POSTING_BEYOND_JOURNAL,
                    About.POSTING,
                    f"beyond the journal (it claims block {row[P_BLOCK]}, but the last block, "
                    f"{self.previous_block}, ends before posting {self.next_posting})",
                    f"sequence < {self.next_posting}",
                    row[P_SEQUENCE],
                    block=row[P_BLOCK],
                    **posting_ids(row),
                )


# ---- the lease and anchors ----


async def check_lease(
    connection: Any, config: AuditConfig, log: FindingLog, report: ShardReport
) -> None:
    recorded = await connection.fetchval(
        queries.LEASE_LAST_BLOCK_SQL,
        timeout=config.statement_timeout_s,
    )
    if recorded is not None and recorded != report.head_block:
        log.add(
            FindingKind.LEASE_AHEAD_OF_JOURNAL,
            About.BLOCK,
            f"the journal ends at block {report.head_block}, but the writer lease records "
            f"block {recorded} as the last committed",
            recorded,
            report.head_block,
            block=max(recorded, report.head_block),
        )


async def check_anchors(connection: Any, config: AuditConfig, log: FindingLog, shard: int) -> None:
    for anchor in config.anchors:
        if anchor.shard != shard:
            continue
        stored = await connection.fetchval(
            queries.BLOCK_HASH_HEX_SQL,
            anchor.block,
            timeout=config.statement_timeout_s,
        )
        if stored != anchor.hash_hex.lower():
            log.add(
                FindingKind.ANCHOR_MISMATCH,
                About.BLOCK,
                f"hash {stored or 'missing'}, but the anchor records {anchor.hash_hex}",
                anchor.hash_hex,
                stored or "missing",
                block=anchor.block,
            )
