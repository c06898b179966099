"""The candidate-layout probe of issue 13 (bench/closed_loop/layout_probe.py) at small scale on a
real embedded PostgreSQL: every layout loads the same synthetic journal and is measured from the
server's own relation sizes. Sizes only, never speed."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bench.closed_loop import layout_probe
from shards.local.embedded_pg import EmbeddedPostgres

_numbers = itertools.count()


def test_every_layout_is_measured_on_the_same_journal(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    name = f"probe_{next(_numbers)}_{random.randrange(1 << 30)}"
    pg.create_database(name)
    out = tmp_path / "out"
    argv = ["--dsn", pg.dsn(name), "--accounts", "300", "--transfers", "3000"]
    argv += ["--block-size", "100", "--page-blocks", "5", "--vacuum-blocks", "10"]
    assert layout_probe.main([*argv, "--out", str(out)]) == 0
    sizes = {s["layout"]: s for s in json.loads((out / "layouts.json").read_text())}
    assert set(sizes) == set(layout_probe.LAYOUTS)
    # today's layout is the shard schema itself: what the storage bench measures on a real
    # shard (about 400 B per posting), and every candidate stores less per posting.
    assert sizes["today"]["bytes_per_posting"] > 300
    for layout in ("keyed", "packed", "packed-ids", "packed-static"):
        assert 0 < sizes[layout]["bytes_per_posting"] < sizes["today"]["bytes_per_posting"]
    assert sizes["packed"]["bytes_per_posting"] < sizes["keyed"]["bytes_per_posting"]
    # Accounts written once hold less than accounts updated after every block.
    assert sizes["packed-static"]["bytes_per_account"] < sizes["packed"]["bytes_per_account"]
    parts = {part for part, _ in sizes["packed"]["per_posting"]}
    assert {"account_pages (heap)", "transaction_blocks_by_id (index)"} <= parts
    assert "| packed-static |" in (out / "layouts.md").read_text()


def test_the_journal_keeps_every_account_balanced() -> None:
    journal = layout_probe.synthetic_journal(50, 400, 64, seed=3)
    assert journal.transaction_count == 450 and journal.posting_count == 900
    sums = [[0, 0] for _ in journal.account_ids]
    for block in journal.blocks:
        for posting in block.postings:
            sums[posting.account_key][0 if posting.is_debit else 1] += posting.amount
            after = [posting.debits_after, posting.credits_after]
            assert after == sums[posting.account_key]
    assert sums == journal.counters
    assert sum(d for d, _ in sums) == sum(c for _, c in sums)


def _unvarint(body: bytes) -> list[int]:
    values, shift, value = [], 0, 0
    for byte in body:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append((value >> 1) ^ -(value & 1))
            shift, value = 0, 0
    return values


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(-(10**12), 10**12)), min_size=1))
def test_a_page_body_decodes_to_its_postings(steps: list[tuple[int, int]]) -> None:
    sequence, postings = 100, []
    for gap, amount in steps:
        sequence += gap + 1
        posting = layout_probe.Posting(sequence, 1, 1, amount < 0, abs(amount), 0, 0, 0)
        postings.append((sequence, 7 + gap % 3, posting))
    decoded = _unvarint(layout_probe.page_body(postings))
    expected = []
    for seq, block, posting in postings:
        signed = -posting.amount if posting.is_debit else posting.amount
        expected += [seq - postings[0][0], block - postings[0][1], signed, 0]
    assert decoded == expected
