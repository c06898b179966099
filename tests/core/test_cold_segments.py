"""Cold segments (core/store/cold): real files in a temporary directory, real hashes and
signatures (tests/support/cold_chains.py builds chains as a writer would).

Measured (not asserted; test_a_large_segment_prunes_row_groups_and_measures_its_bytes prints it
under `pytest -s`): a segment of 107,088 postings (53,544 two-leg transactions among 2,000
accounts in 501 blocks, ids as `cust-N/acc-...` and `tx-...`, amounts up to 10^9, random
metadata) is 49.5 bytes per posting, the whole segment (every file, the transactions, blocks
and accounts included) divided by its postings: 28.5 of them the postings file, 20 the
transactions (their legs texts repeat ids and amounts).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import tempfile
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import journal, signing
from core.journal import BlockHeader
from core.model import (
    SUCCESS_CODES,
    AccountSpec,
    AccountState,
    CloseSpec,
    Kind,
    Leg,
    Posting,
    TransactionSpec,
    TransactionState,
)
from core.state import Batch, Item, JournalPosition
from core.store.cold.format import (
    MANIFEST_NAME,
    ColdBlock,
    FileEntry,
    Manifest,
    SegmentError,
    from_streamed,
    manifest_of_json,
)
from core.store.cold.read import Segment, segment_paths
from core.store.cold.verify import verify_chain, verify_segment
from core.store.cold.write import TEMPORARY_PREFIX, remove_leftovers, write_segment
from core.store.shard import build_block
from core.store.stream import StreamedBlock, StreamedTransaction, committed_block
from tests.support.cold_chains import ChainState, build_chain
from tests.support.cold_chains import build_block as build_cold_block

SIGNER = signing.Signer(signing.generate())
VERIFIER = signing.Verifier((signing.VerifyKey(SIGNER.key_id, SIGNER.public_key),))
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _chain(seed: int, block_count: int) -> list[ColdBlock]:
    return build_chain(ChainState(), seed, block_count, SIGNER)


def _account_postings(blocks: list[ColdBlock]) -> dict[str, list[Posting]]:
    found: dict[str, list[Posting]] = {}
    for block in blocks:
        for posting in block.postings:
            found.setdefault(posting.account_id, []).append(posting)
    return found


@PROPERTY
@given(seed=st.integers(0, 2**32), block_count=st.integers(1, 12))
def test_a_segment_reads_back_as_written(seed: int, block_count: int) -> None:
    blocks = _chain(seed, block_count)
    with tempfile.TemporaryDirectory() as directory:
        path = write_segment(Path(directory), 0, blocks, None)
        assert verify_segment(path, "") == []
        read = Segment(path).blocks()
        assert read == blocks
        for written, back in zip(blocks, read, strict=True):
            assert back.lines() == written.lines()
            assert back.recomputed_hash() == written.header.hash
        assert verify_segment(path, "", VERIFIER) == []
        manifest = Segment(path).manifest
        assert (manifest.first_block, manifest.last_block) == (1, block_count)
        assert manifest.first_previous_hash == journal.GENESIS_HASH
        assert manifest.last_hash == blocks[-1].header.hash
        assert manifest.posting_count == sum(len(b.postings) for b in blocks)
        middle = (1 + block_count) // 2
        assert Segment(path).blocks(middle, middle) == [blocks[middle - 1]]


@PROPERTY
@given(seed=st.integers(0, 2**32), limits=st.lists(st.integers(1, 7), min_size=1, max_size=8))
def test_paging_an_accounts_postings_reproduces_them(seed: int, limits: list[int]) -> None:
    blocks = _chain(seed, 10)
    with tempfile.TemporaryDirectory() as directory:
        segment = Segment(write_segment(Path(directory), 0, blocks, None))
        for account_id, expected in _account_postings(blocks).items():
            pages: list[Posting] = []
            after = 0
            for turn in range(len(expected) + 1):
                page = segment.postings_after(account_id, after, limits[turn % len(limits)])
                if not page:
                    break
                pages.extend(page)
                after = page[-1].sequence
            assert pages == expected
        assert segment.postings_after("cust-0/none", 0, 5) == []


@PROPERTY
@given(seed=st.integers(0, 2**32), picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=10))
def test_balance_at_a_time_is_the_last_posting_at_or_before_it(seed: int, picks: list[int]) -> None:
    blocks = _chain(seed, 10)
    postings = [posting for block in blocks for posting in block.postings]
    if not postings:
        return
    times = [p.timestamp_ns for p in postings]
    moments = [min(times) - 1, max(times) + 1]
    moments += [times[pick % len(times)] + pick % 3 - 1 for pick in picks]
    with tempfile.TemporaryDirectory() as directory:
        segment = Segment(write_segment(Path(directory), 0, blocks, None))
        for account_id, own in _account_postings(blocks).items():
            for at in moments:
                earlier = [p for p in own if p.timestamp_ns <= at]
                expected = max(earlier, key=lambda p: p.sequence) if earlier else None
                assert segment.last_posting_at(account_id, at) == expected


def test_a_transaction_is_found_by_its_id(tmp_path: Path) -> None:
    blocks = _chain(7, 12)
    segment = Segment(write_segment(tmp_path, 0, blocks, None))
    for block in blocks:
        for transaction in block.transactions:
            assert segment.transaction(transaction.spec.id) == (transaction, block.header.sequence)
    assert segment.transaction("tx-none") is None


def test_a_large_segment_prunes_row_groups_and_measures_its_bytes(tmp_path: Path) -> None:
    """Many row groups: reads still answer exactly; prints the bytes per posting."""
    state = ChainState()
    rng = random.Random(3)
    first = [build_cold_block(state, rng, None, account_count=2_000, transaction_count_max=0)]
    pool = sorted(state.counters)
    blocks = first + [
        build_cold_block(state, rng, None, transaction_count_max=200, account_pool=pool)
        for _ in range(500)
    ]
    path = write_segment(tmp_path, 0, blocks, None)
    posting_count = sum(len(b.postings) for b in blocks)
    assert pq.ParquetFile(path / "postings.parquet").metadata.num_row_groups > 1
    total = sum(file.stat().st_size for file in path.iterdir())
    print(f"\n{posting_count} postings: {total / posting_count:.1f} bytes per posting")
    segment = Segment(path)
    expected = _account_postings(blocks)
    for account_id in random.Random(4).sample(sorted(expected), 20):
        assert segment.postings_after(account_id, 0, 10_000) == expected[account_id]
        at = expected[account_id][len(expected[account_id]) // 2].timestamp_ns
        assert (
            segment.last_posting_at(account_id, at)
            == expected[account_id][len(expected[account_id]) // 2]
        )
    last = blocks[-1].transactions[-1]
    assert segment.transaction(last.spec.id) == (last, blocks[-1].header.sequence)


@PROPERTY
@given(seed=st.integers(0, 2**32), cuts=st.sets(st.integers(1, 14), max_size=4))
def test_a_chain_cut_into_segments_verifies_and_reads_back_whole(seed: int, cuts: set[int]) -> None:
    blocks = _chain(seed, 15)
    bounds = [0, *sorted(cuts), 15]
    with tempfile.TemporaryDirectory() as directory:
        paths: list[Path] = []
        for start, end in itertools.pairwise(bounds):
            previous = Segment(paths[-1]).manifest if paths else None
            paths.append(write_segment(Path(directory), 0, blocks[start:end], previous))
        assert segment_paths(Path(directory)) == paths  # names sort in journal order
        assert verify_chain(paths, VERIFIER) == []
        assert [b for path in paths for b in Segment(path).blocks()] == blocks


# ---- refusals, idempotence, crashes ----


def test_non_contiguous_or_wrongly_hashed_blocks_are_refused(tmp_path: Path) -> None:
    blocks = _chain(11, 6)
    with pytest.raises(SegmentError, match="not contiguous"):
        write_segment(tmp_path, 0, blocks[:2] + blocks[3:], None)
    altered = blocks[2].postings[0]._replace(posted_amount=1) if blocks[2].postings else None
    tampered = list(blocks)
    if altered is not None:
        tampered[2] = ColdBlock(
            blocks[2].header, blocks[2].accounts, blocks[2].transactions,
            (altered, *blocks[2].postings[1:]), blocks[2].closures,
        )  # fmt: skip
    else:
        tampered[2] = ColdBlock(
            replace(blocks[2].header, hash=bytes(32)), blocks[2].accounts,
            blocks[2].transactions, blocks[2].postings, blocks[2].closures,
        )  # fmt: skip
    with pytest.raises(SegmentError, match="block 3"):
        write_segment(tmp_path, 0, tampered, None)
    with pytest.raises(SegmentError, match="starts at block 1"):
        write_segment(tmp_path, 0, blocks[2:], None)
    with pytest.raises(SegmentError):
        write_segment(tmp_path, 0, [], None)
    first = write_segment(tmp_path, 0, blocks[:3], None)
    previous = Segment(first).manifest
    with pytest.raises(SegmentError, match="does not follow"):
        write_segment(tmp_path, 0, blocks[4:], previous)
    with pytest.raises(SegmentError, match="shard 0's, not shard 1's"):
        write_segment(tmp_path, 1, blocks[3:], previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]


def test_writing_the_same_range_again_is_idempotent(tmp_path: Path) -> None:
    blocks = _chain(5, 8)
    path = write_segment(tmp_path, 0, blocks, None)
    before = {file.name: file.read_bytes() for file in path.iterdir()}
    assert write_segment(tmp_path, 0, blocks, None) == path
    assert {file.name: file.read_bytes() for file in path.iterdir()} == before
    other = _chain(6, 8)  # the same range, another history
    with pytest.raises(SegmentError, match="exists with other content"):
        write_segment(tmp_path, 0, other, None)


def test_a_crash_leaves_no_segment_and_the_next_write_cleans_up(tmp_path: Path) -> None:
    blocks = _chain(9, 6)
    # A write killed after some of its files: a temporary directory, half full.
    leftover = tmp_path / f"{TEMPORARY_PREFIX}segment-0000-x-{'0' * 32}"
    leftover.mkdir()
    (leftover / "blocks.parquet").write_bytes(b"PAR1 half a file")
    assert segment_paths(tmp_path) == []  # ignored: never read as a segment
    path = write_segment(tmp_path, 0, blocks, None)
    assert segment_paths(tmp_path) == [path]
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert remove_leftovers(tmp_path) == []
    assert verify_segment(path) == []


# ---- tampering ----


def _rewrite_manifest(path: Path, **changes: object) -> None:
    manifest, _ = manifest_of_json(json.loads((path / MANIFEST_NAME).read_bytes()))
    fields = {name: getattr(manifest, name) for name in Manifest.__dataclass_fields__}
    fields.update(changes)
    (path / MANIFEST_NAME).write_bytes(Manifest(**fields).to_json())  # type: ignore[arg-type]


def test_a_flipped_byte_is_found_in_its_file(tmp_path: Path) -> None:
    path = write_segment(tmp_path, 0, _chain(13, 8), None)
    target = path / "postings.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x01
    target.write_bytes(bytes(data))
    findings = verify_segment(path)
    assert ("file_digest", "postings.parquet") in {(f.code, f.file) for f in findings}
    assert all(f.segment == path.name for f in findings)


def _add_one(path: Path, name: str, column: str, key_column: str, key: int) -> None:
    """Add 1 to column in the row of the file whose key_column is key, and update the
    manifest's size and SHA-256 of the file (and so its digest) to match: a forger's edit."""
    target = path / name
    table = pq.read_table(target)
    changed = pc.if_else(pc.equal(table[key_column], key), pc.add(table[column], 1), table[column])
    index = table.schema.get_field_index(column)
    table = table.set_column(index, table.schema.field(index), changed)
    pq.write_table(table, target, compression="zstd")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    files = tuple(
        FileEntry(e.name, target.stat().st_size, digest, e.row_count) if e.name == name else e
        for e in Segment(path).manifest.files
    )
    _rewrite_manifest(path, files=files)


def test_an_amount_rewritten_with_matching_digests_is_found_at_its_block(tmp_path: Path) -> None:
    blocks = _chain(17, 8)
    victim = next(p for b in blocks for p in b.postings)
    victim_block = next(b.header.sequence for b in blocks if victim in b.postings)
    path = write_segment(tmp_path, 0, blocks, None)
    _add_one(path, "postings.parquet", "posted_amount", "sequence", victim.sequence)
    findings = verify_segment(path)
    assert [(f.code, f.block) for f in findings] == [("block_hash", victim_block)]


def test_a_header_field_outside_the_hash_rewritten_is_found(tmp_path: Path) -> None:
    """next_posting_sequence is not hashed: its check is the postings' range."""
    blocks = _chain(37, 6)
    path = write_segment(tmp_path, 0, blocks, None)
    _add_one(path, "blocks.parquet", "next_posting_sequence", "sequence", 3)
    findings = verify_segment(path)
    assert {(f.code, f.block) for f in findings} == {("posting_range", 3), ("posting_range", 4)}


def test_a_manifest_edited_without_its_digest_is_found(tmp_path: Path) -> None:
    path = write_segment(tmp_path, 0, _chain(19, 4), None)
    document = json.loads((path / MANIFEST_NAME).read_bytes())
    document["posting_count"] += 1
    (path / MANIFEST_NAME).write_text(json.dumps(document))
    codes = {f.code for f in verify_segment(path)}
    assert {"manifest_digest", "count_mismatch"} <= codes
    (path / "closures.parquet").unlink()
    assert ("file_missing", "closures.parquet") in {(f.code, f.file) for f in verify_segment(path)}
    (path / MANIFEST_NAME).write_text("{not json")
    assert [f.code for f in verify_segment(path)] == ["manifest_unreadable"]


def test_a_chain_of_segments_verifies_and_a_break_between_two_is_found(tmp_path: Path) -> None:
    state = ChainState()
    first_blocks = build_chain(state, 1, 5, SIGNER)
    second_blocks = build_chain(state, 2, 5, SIGNER)
    third_blocks = build_chain(state, 3, 5, SIGNER)
    first = write_segment(tmp_path / "good", 0, first_blocks, None)
    second = write_segment(tmp_path / "good", 0, second_blocks, Segment(first).manifest)
    third = write_segment(tmp_path / "good", 0, third_blocks, Segment(second).manifest)
    assert verify_chain([first, second, third]) == []
    # Left out the middle segment: the third does not follow the first.
    findings = verify_chain([first, third])
    assert {f.code for f in findings} == {"previous_segment", "chain_break"}
    assert {f.segment for f in findings} == {third.name}
    # A second segment forged onto another history: its own digests fine, its link broken.
    forged_state = ChainState()
    forged_first = build_chain(forged_state, 99, 5)
    forged_second = build_chain(forged_state, 2, 5)
    other = write_segment(tmp_path / "forged", 0, forged_first, None)
    forged = write_segment(tmp_path / "forged", 0, forged_second, Segment(other).manifest)
    assert verify_segment(forged) == []
    codes = {(f.code, f.block) for f in verify_chain([first, forged])}
    assert ("chain_break", 6) in codes and ("previous_segment", None) in codes


# ---- from what the change stream's reads make ----


def test_a_streamed_block_makes_the_same_cold_block(tmp_path: Path) -> None:
    blocks = _chain(23, 6)
    for block in blocks:
        h = block.header
        streamed = StreamedBlock(
            h.sequence, h.hash, h.previous_hash, h.created_at_ns,
            [StreamedTransaction(t.state(), None) for t in block.transactions],
            list(block.postings), list(block.accounts), list(block.closures),
        )  # fmt: skip
        assert from_streamed(h, streamed) == block
    with pytest.raises(SegmentError, match="another block's"):
        from_streamed(blocks[1].header, streamed)
    path = write_segment(tmp_path, 0, blocks, None)
    assert pa.__version__ and verify_segment(path) == []


def test_a_signature_that_does_not_verify_is_found_at_its_block(tmp_path: Path) -> None:
    blocks = _chain(29, 5)
    other = signing.Signer(signing.generate())
    h = blocks[3].header
    forged = replace(h, key_id=other.key_id, signature=other.sign(1, h.sequence, h.hash))
    blocks[3] = ColdBlock(
        forged, blocks[3].accounts, blocks[3].transactions, blocks[3].postings, blocks[3].closures
    )
    path = write_segment(tmp_path, 0, blocks, None)
    assert verify_segment(path) == []  # the hashes hold; the signature needs the keys
    findings = verify_segment(path, None, VERIFIER)
    assert [(f.code, f.block) for f in findings] == [("signature", 4)]


def test_a_truncated_file_is_found_unreadable(tmp_path: Path) -> None:
    path = write_segment(tmp_path, 0, _chain(31, 5), None)
    target = path / "transactions.parquet"
    target.write_bytes(target.read_bytes()[:100])
    found = {(f.code, f.file) for f in verify_segment(path)}
    assert {
        ("file_size", "transactions.parquet"),
        ("file_unreadable", "transactions.parquet"),
    } <= found


# ---- from the writer's own path: the state machine, build_block, committed_block ----


def _writer_chain(signer: signing.Signer) -> tuple[list[ColdBlock], list[bytes]]:
    """Blocks as a node commits them (core.state.Batch, core.store.shard.build_block) and as
    the change stream makes them of what the writer held (core.store.stream.committed_block),
    with the bodies the writer hashed."""

    def transfer(id_: str, kind: Kind, debit: str, credit: str, amount: int) -> TransactionSpec:
        legs = (Leg(debit, True, amount, "USD"), Leg(credit, False, amount, "USD"))
        timeout = 60 if kind is Kind.PENDING else 0
        return TransactionSpec(id_, kind, legs, 3, (("why", "rent|é"),), "2026-12-07", timeout, "")

    batches: list[list[Item]] = [
        [AccountSpec(f"cust-{n}/deposit", "USD", 1, n % 2 == 0, False, ()) for n in range(5)]
        + [AccountSpec("@bank/cash", "USD", 9, False, False, (("branch", "é|1"),))],
        [
            transfer(f"tx-{n}", Kind.ORDINARY, "@bank/cash", f"cust-{n}/deposit", 1_000 + n)
            for n in range(4)
        ],
        [
            transfer("hold-1", Kind.PENDING, "cust-0/deposit", "cust-1/deposit", 300),
            CloseSpec("cust-4/deposit"),
        ],
        [TransactionSpec("post-1", Kind.POST_PENDING, (), 0, (), "", 0, "hold-1")],
    ]
    accounts: dict[str, AccountState | None] = {}
    transactions: dict[str, TransactionState | None] = {}
    previous = BlockHeader(0, journal.GENESIS_HASH, journal.GENESIS_HASH, 0, 0, 1, 0)
    position = JournalPosition(1, 0)
    blocks, bodies = [], []
    for number, items in enumerate(batches):
        for item in items:  # what the writer loads for a batch (None: not there)
            if isinstance(item, TransactionSpec):
                transactions.setdefault(item.id, None)
                for leg in item.legs:
                    accounts.setdefault(leg.account_id, None)
            elif isinstance(item, AccountSpec):
                accounts.setdefault(item.id, None)
            elif isinstance(item, CloseSpec):
                accounts.setdefault(item.account_id, None)
        batch = Batch(accounts, transactions, position, 1_800_000_000_000_000_000 + number)
        results = batch.apply([[item] for item in items])
        assert all(r.code in SUCCESS_CODES for rs in results for r in rs), results
        writes, position = batch.out, batch.position
        block = build_block(writes, previous, 1, position.next_posting_sequence,
                            position.last_timestamp_ns, 1_800_000_000_000_000_000 + number,
                            signer)  # fmt: skip
        accounts.update({a.spec.id: a for a in writes.new_accounts}, **writes.changed_accounts)
        transactions.update({t.spec.id: t for t in writes.new_transactions})
        transactions.update(writes.changed_transactions)
        page = committed_block(block.header, writes, dict(accounts), dict(transactions))
        blocks.append(from_streamed(block.header, page.blocks[0]))
        bodies.append(block.body)
        previous = block.header
    return blocks, bodies


def test_blocks_as_the_writer_commits_them_make_a_segment(tmp_path: Path) -> None:
    blocks, bodies = _writer_chain(SIGNER)
    assert [len(b.postings) for b in blocks] == [0, 8, 2, 2]
    assert blocks[2].closures and blocks[3].transactions[0].spec.kind is Kind.POST_PENDING
    path = write_segment(tmp_path, 0, blocks, None)
    assert verify_segment(path, "", VERIFIER) == []
    read = Segment(path).blocks()
    assert [journal.block_body(b.lines()) for b in read] == bodies
    assert Segment(path).transaction("hold-1") == (blocks[2].transactions[0], 3)
