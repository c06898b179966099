"""Verifying segments: each one against its manifest and its blocks' hashes, and a list of them
as one chain. A bad segment is findings, never an exception."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core import journal, signing
from core.store.cold.format import (
    FILE_NAMES,
    FORMAT,
    MANIFEST_NAME,
    SCHEMAS,
    ColdBlock,
    Manifest,
    manifest_of_json,
)
from core.store.cold.tables import blocks_of, headers_of


@dataclass(frozen=True, slots=True)
class Finding:
    # manifest_missing, manifest_unreadable, manifest_digest, format_unknown, file_missing,
    # file_size, file_digest, file_unreadable, schema, count_mismatch, block_hash,
    # chain_break, range_mismatch, posting_range, previous_segment, signature.
    code: str
    message: str
    block: int | None = None
    file: str = ""
    segment: str = ""


def read_manifest(path: Path) -> tuple[Manifest | None, list[Finding]]:
    """The segment's manifest, or None with why; a wrong digest or format is a finding beside
    the manifest read."""
    where = path / MANIFEST_NAME
    try:
        document = json.loads(where.read_bytes())
        manifest, stated = manifest_of_json(document)
    except FileNotFoundError:
        return None, [
            Finding("manifest_missing", f"{MANIFEST_NAME} is missing", file=MANIFEST_NAME)
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        message = f"{MANIFEST_NAME} is not a segment manifest: {error!r}"
        return None, [Finding("manifest_unreadable", message, file=MANIFEST_NAME)]
    findings = []
    if manifest.format != FORMAT:
        message = f"format {manifest.format!r}, not {FORMAT!r}"
        findings.append(Finding("format_unknown", message, file=MANIFEST_NAME))
    if manifest.digest() != stated:
        message = f"the manifest's digest is {stated}, its content's {manifest.digest()}"
        findings.append(Finding("manifest_digest", message, file=MANIFEST_NAME))
    return manifest, findings


def verify_segment(
    path: Path,
    expected_previous_manifest_digest: str | None = None,
    verifier: signing.Verifier | None = None,
) -> list[Finding]:
    """Everything wrong with the segment at path (empty: it verifies): its manifest, each
    file's size and SHA-256, that each file reads with its schema, the row counts, every
    block's hash recomputed from its rows, the chain inside it, and, when given, the previous
    segment's manifest digest it must name and the verify keys its signed blocks' signatures
    must verify with (unsigned blocks are the audit's to judge)."""
    manifest, findings = read_manifest(path)
    if manifest is None:
        return _named(findings, path)
    if (
        expected_previous_manifest_digest is not None
        and manifest.previous_manifest_digest != expected_previous_manifest_digest
    ):
        message = (
            f"names previous manifest {manifest.previous_manifest_digest or '(none)'}, "
            f"not {expected_previous_manifest_digest or '(none)'}"
        )
        findings.append(Finding("previous_segment", message, file=MANIFEST_NAME))
    findings.extend(_file_findings(path, manifest))
    tables, unreadable = _read_tables(path, manifest)
    findings.extend(unreadable)
    if tables is not None:
        findings.extend(_content_findings(manifest, tables, verifier))
    return _named(findings, path)


def _named(findings: list[Finding], path: Path) -> list[Finding]:
    return [Finding(f.code, f.message, f.block, f.file, f.segment or path.name) for f in findings]


def _file_findings(path: Path, manifest: Manifest) -> list[Finding]:
    findings = []
    listed = {entry.name for entry in manifest.files}
    for name in FILE_NAMES:
        if name not in listed:
            findings.append(Finding("file_missing", f"the manifest lists no {name}", file=name))
    for entry in manifest.files:
        file = path / entry.name
        if entry.name not in FILE_NAMES:
            findings.append(
                Finding("file_unreadable", f"{entry.name} is no segment file", file=entry.name)
            )
            continue
        if not file.is_file():
            findings.append(Finding("file_missing", f"{entry.name} is missing", file=entry.name))
            continue
        size = file.stat().st_size
        if size != entry.byte_count:
            message = f"{entry.name} is {size} bytes, the manifest says {entry.byte_count}"
            findings.append(Finding("file_size", message, file=entry.name))
        digest = sha256_hex(file)
        if digest != entry.sha256_hex:
            message = f"{entry.name}'s SHA-256 is {digest}, the manifest says {entry.sha256_hex}"
            findings.append(Finding("file_digest", message, file=entry.name))
    return findings


def sha256_hex(path: Path) -> str:
    """The file's SHA-256 (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_tables(path: Path, manifest: Manifest) -> tuple[dict[str, Any] | None, list[Finding]]:
    tables: dict[str, Any] = {}
    findings = []
    rows = {entry.name: entry.row_count for entry in manifest.files}
    for name in FILE_NAMES:
        try:
            table = pq.read_table(path / name)
        # Whatever a damaged file makes the Parquet reader raise is a finding, not a crash.
        except Exception as error:
            message = f"{name} does not read as Parquet: {error}"
            findings.append(Finding("file_unreadable", message, file=name))
            continue
        if not table.schema.equals(SCHEMAS[name], check_metadata=False):
            message = f"{name}'s columns are not the format's: {table.schema.names}"
            findings.append(Finding("schema", message, file=name))
            continue
        if table.num_rows != rows.get(name):
            message = f"{name} has {table.num_rows} rows, the manifest says {rows.get(name)}"
            findings.append(Finding("count_mismatch", message, file=name))
        tables[name] = table
    if findings:
        return None, findings
    return tables, []


def _content_findings(
    manifest: Manifest, tables: dict[str, pa.Table], verifier: signing.Verifier | None
) -> list[Finding]:
    findings = _total_findings(manifest, tables)
    try:
        blocks = blocks_of(tables)
        counts = [counts for _, counts in headers_of(tables["blocks.parquet"])]
    # Rows that parse as Parquet but not as records (a kind out of range, legs unparsable).
    except (ValueError, KeyError, TypeError, IndexError) as error:
        return [*findings, Finding("file_unreadable", f"rows are not records: {error!r}")]
    findings.extend(_block_findings(manifest, blocks, counts))
    if verifier is not None:
        findings.extend(_signature_findings(manifest.shard, blocks, verifier))
    held = (
        ("accounts.parquet", sum(len(b.accounts) for b in blocks)),
        ("transactions.parquet", sum(len(b.transactions) for b in blocks)),
        ("postings.parquet", sum(len(b.postings) for b in blocks)),
        ("closures.parquet", sum(len(b.closures) for b in blocks)),
    )
    for name, count in held:
        if count != tables[name].num_rows:
            message = f"{tables[name].num_rows - count} rows of {name} belong to no block"
            findings.append(Finding("count_mismatch", message, file=name))
    return findings


def _total_findings(manifest: Manifest, tables: dict[str, pa.Table]) -> list[Finding]:
    findings = []
    stated = (
        ("blocks.parquet", manifest.block_count),
        ("accounts.parquet", manifest.account_count),
        ("transactions.parquet", manifest.transaction_count),
        ("postings.parquet", manifest.posting_count),
        ("closures.parquet", manifest.closure_count),
    )
    for name, count in stated:
        if tables[name].num_rows != count:
            message = f"{name} has {tables[name].num_rows} rows, the manifest counts {count}"
            findings.append(Finding("count_mismatch", message, file=name))
    return findings


def _block_findings(
    manifest: Manifest, blocks: list[ColdBlock], counts: list[tuple[int, int, int, int]]
) -> list[Finding]:
    findings = []
    if not blocks:
        return [Finding("range_mismatch", "the segment holds no block", file="blocks.parquet")]
    first, last = blocks[0].header, blocks[-1].header
    if (first.sequence, last.sequence) != (manifest.first_block, manifest.last_block):
        message = (
            f"holds blocks {first.sequence}..{last.sequence}, the manifest says "
            f"{manifest.first_block}..{manifest.last_block}"
        )
        findings.append(Finding("range_mismatch", message, file="blocks.parquet"))
    if first.previous_hash != manifest.first_previous_hash:
        message = f"block {first.sequence}'s previous hash is not the manifest's"
        findings.append(Finding("chain_break", message, first.sequence))
    if last.hash != manifest.last_hash:
        findings.append(
            Finding(
                "chain_break", f"block {last.sequence}'s hash is not the manifest's", last.sequence
            )
        )
    if manifest.previous_manifest_digest == "" and (
        first.sequence != 1 or first.previous_hash != journal.GENESIS_HASH
    ):
        message = f"names no previous segment but starts at block {first.sequence}, not genesis"
        findings.append(Finding("chain_break", message, first.sequence))
    for index, (block, stated) in enumerate(zip(blocks, counts, strict=True)):
        findings.extend(_one_block_findings(block, stated, blocks[index - 1] if index else None))
    return findings


def _one_block_findings(
    block: ColdBlock, stated: tuple[int, int, int, int], before: ColdBlock | None
) -> list[Finding]:
    findings = []
    header = block.header
    sequence = header.sequence
    held = (len(block.accounts), len(block.transactions), len(block.postings), len(block.closures))
    if held != stated:
        message = (
            f"block {sequence} holds (accounts, transactions, postings, closures) {held}, "
            f"its header says {stated}"
        )
        findings.append(Finding("count_mismatch", message, sequence))
    if block.recomputed_hash() != header.hash:
        message = f"block {sequence}'s rows do not hash to its hash {header.hash.hex()}"
        findings.append(Finding("block_hash", message, sequence))
    if before is not None:
        if sequence != before.header.sequence + 1:
            message = f"block {sequence} follows block {before.header.sequence}"
            findings.append(Finding("chain_break", message, sequence))
        elif header.previous_hash != before.header.hash:
            message = f"block {sequence}'s previous hash is not block {sequence - 1}'s hash"
            findings.append(Finding("chain_break", message, sequence))
    findings.extend(_posting_range_findings(block, before))
    return findings


def _posting_range_findings(block: ColdBlock, before: ColdBlock | None) -> list[Finding]:
    """A block's postings are the sequences from where the block before ended to where its
    own header ends (the order of its P lines, and what core.store.stream reads by)."""
    header = block.header
    first = header.next_posting_sequence - len(block.postings)
    findings = []
    if [p.sequence for p in block.postings] != list(range(first, header.next_posting_sequence)):
        message = (
            f"block {header.sequence}'s postings are not the sequences {first}.."
            f"{header.next_posting_sequence - 1}"
        )
        findings.append(Finding("posting_range", message, header.sequence))
    if before is not None and first != before.header.next_posting_sequence:
        message = (
            f"block {header.sequence}'s postings start at {first}, block "
            f"{before.header.sequence}'s ended before {before.header.next_posting_sequence}"
        )
        findings.append(Finding("posting_range", message, header.sequence))
    return findings


def _signature_findings(
    shard: int, blocks: list[ColdBlock], verifier: signing.Verifier
) -> list[Finding]:
    findings = []
    for block in blocks:
        h = block.header
        if not h.key_id and not h.signature:
            continue
        problem = verifier.problem(shard, h.sequence, h.hash, h.key_id, h.signature)
        if problem:
            findings.append(Finding("signature", f"block {h.sequence}: {problem}", h.sequence))
    return findings


def verify_chain(paths: Sequence[Path], verifier: signing.Verifier | None = None) -> list[Finding]:
    """Every finding of each segment, and of each link between consecutive ones: same shard,
    the next block, its first previous hash the last hash before, the previous manifest's
    digest named. The first segment's predecessor is not checked unless it names none (then it
    must start the journal)."""
    findings: list[Finding] = []
    previous: Manifest | None = None
    for path in paths:
        expected = previous.digest() if previous is not None else None
        findings.extend(verify_segment(path, expected, verifier))
        manifest, _ = read_manifest(path)
        if manifest is None:
            previous = None
            continue
        if previous is not None:
            findings.extend(_named(_link_findings(previous, manifest), path))
        previous = manifest
    return findings


def _link_findings(previous: Manifest, manifest: Manifest) -> list[Finding]:
    findings = []
    if manifest.shard != previous.shard:
        message = f"shard {manifest.shard} follows a segment of shard {previous.shard}"
        findings.append(Finding("chain_break", message, manifest.first_block, MANIFEST_NAME))
    if manifest.first_block != previous.last_block + 1:
        message = f"starts at block {manifest.first_block}, after block {previous.last_block}"
        findings.append(Finding("chain_break", message, manifest.first_block, MANIFEST_NAME))
    if manifest.first_previous_hash != previous.last_hash:
        message = (
            f"block {manifest.first_block}'s previous hash is not the previous segment's "
            f"last hash (block {previous.last_block})"
        )
        findings.append(Finding("chain_break", message, manifest.first_block, MANIFEST_NAME))
    return findings
