"""The journal export's files, and the verifier a third party runs on them alone.

An export is a directory of CSV or JSON Lines files (blocks, accounts, transactions, postings,
closures, balances and a manifest); docs/audit.md documents every column and the verification
procedure. This module defines the files (their columns, canonical lines and digests) and
verifies them; core.audit.exporter writes them from a shard database. It imports nothing
outside the Python standard library, on purpose: an auditor can copy this one file and run
`python3 export.py DIR` to verify an export without Tally, its database or its dependencies.

Every line of every file ends with `line_digest`, the first 16 hex digits of the SHA-256 of the
line's other columns joined by "|". It is a locator, not the proof: a changed byte anywhere is
found at its file and line, while the proof that nothing was altered is the block hash chain,
recomputed from the journal lines the rows encode (the same lines core/journal.py hashed).

Each block also carries its writer's Ed25519 signature over its head (core/signing.py). Checking
signatures needs public keys and the `cryptography` package: it is an explicit option
(`--verify-key PATH`), and without `cryptography` installed that option fails saying so, while
everything else still runs with the standard library alone.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

# /2: blocks carry key_id and signature (signed heads).
FORMAT: Final = "tally-journal-export/2"
HEAD_PREFIX: Final = "tally-journal-head/1"
DIGEST_HEX_LENGTH: Final = 16
GENESIS_HASH_HEX: Final = "00" * 32
FORMATS: Final = ("csv", "jsonl")
ERROR_COUNT_MAX_DEFAULT: Final = 100

_INTEGER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")  # the canonical text of an integer


@dataclass(frozen=True, slots=True)
class FileSchema:
    name: str
    # Every column but the trailing line_digest, in file order.
    columns: tuple[str, ...]
    integer_columns: frozenset[str]
    # The journal line kind ("A", "T", "P", "X") for rows hashed into blocks, else "".
    journal_kind: str
    # Positions of the integer columns.
    integer_indexes: tuple[int, ...]


def _schema(name: str, columns: str, integers: str, kind: str = "") -> FileSchema:
    names, integer_names = tuple(columns.split()), frozenset(integers.split())
    indexes = tuple(i for i, column in enumerate(names) if column in integer_names)
    return FileSchema(name, names, integer_names, kind, indexes)


_BALANCE_COUNTERS = "debits_posted credits_posted debits_pending credits_pending".split()
_OPENING = " ".join("opening_" + name for name in _BALANCE_COUNTERS)
_CLOSING = " ".join("closing_" + name for name in _BALANCE_COUNTERS)

SCHEMAS: Final[dict[str, FileSchema]] = {
    schema.name: schema
    for schema in (
        _schema("manifest", "key value", ""),
        _schema(
            "blocks",
            "block previous_hash hash epoch created_at_ns next_posting_sequence "
            "last_timestamp_ns account_count transaction_count posting_count closure_count "
            "key_id signature",
            "block epoch created_at_ns next_posting_sequence last_timestamp_ns account_count "
            "transaction_count posting_count closure_count",
        ),
        _schema(
            "accounts",
            "block id currency code flags metadata created_at_ns",
            "block code flags created_at_ns",
            "A",
        ),
        _schema(
            "transactions",
            "block id kind code metadata value_date timeout_seconds target_id legs "
            "applied_legs timestamp_ns",
            "block kind code timeout_seconds timestamp_ns",
            "T",
        ),
        _schema(
            "postings",
            "block sequence transaction_id account_id side posted_amount pending_delta "
            "timestamp_ns debits_posted_after credits_posted_after debits_pending_after "
            "credits_pending_after",
            "block sequence posted_amount pending_delta timestamp_ns debits_posted_after "
            "credits_posted_after debits_pending_after credits_pending_after",
            "P",
        ),
        _schema("closures", "block account_id closed_at_ns", "block closed_at_ns", "X"),
        _schema(
            "balances",
            f"account_id currency {_OPENING} {_CLOSING} posting_count",
            f"{_OPENING} {_CLOSING} posting_count",
        ),
    )
}
JOURNAL_FILES: Final = ("accounts", "transactions", "postings", "closures")
MANIFEST_KEYS: Final = (
    "format shard first_block last_block anchor_hash head_hash first_posting_sequence "
    "next_posting_sequence period_from_ns period_to_ns block_count account_count "
    "transaction_count posting_count closure_count balance_count exported_at_ns"
).split()


# ---- lines: the one definition shared by the exporter, the verifier and the audit ----


def row_text(values: Sequence[object]) -> str:
    return "|".join(map(str, values))


def line_digest(values: Sequence[object]) -> str:
    return hashlib.sha256(row_text(values).encode()).hexdigest()[:DIGEST_HEX_LENGTH]


def journal_line(kind: str, values: Sequence[object]) -> str:
    """The line core.journal hashed, from a row's columns after `block` (same order)."""
    return kind + "|" + "|".join(map(str, values))


def block_hash(previous_hash: bytes, sequence: int, lines: Sequence[str]) -> bytes:
    """As core.journal.block_hash: SHA-256 of the previous hash, a block line, the lines."""
    digest = hashlib.sha256(previous_hash)
    digest.update(f"block|{sequence}\n".encode())
    digest.update("\n".join(lines).encode())
    return digest.digest()


def head_message(shard: int, sequence: int, hash_hex: str, key_id: str) -> bytes:
    """As core.signing.head_message: what a block's signature covers."""
    return f"{HEAD_PREFIX}|{shard}|{sequence}|{hash_hex}|{key_id}".encode()


class SignatureSupportMissing(Exception):
    """--verify-key was given, but the cryptography package is not installed."""


class VerifyKeys:
    """Ed25519 public keys by key id, loaded with `cryptography` (the one import outside the
    standard library, made only when signatures are to be checked)."""

    def __init__(self, pem_keys: Sequence[tuple[str, bytes]]) -> None:
        try:
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ed25519
        except ImportError:
            raise SignatureSupportMissing(
                "checking signatures (--verify-key) needs the cryptography package "
                "(pip install cryptography); without --verify-key the export is verified "
                "without its signatures"
            ) from None
        self._invalid = InvalidSignature
        self.keys: dict[str, Any] = {}
        for where, pem in pem_keys:
            try:
                key = serialization.load_pem_public_key(pem)
            except (ValueError, TypeError) as error:
                raise ValueError(f"{where}: not a PEM public key ({error})") from None
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise ValueError(f"{where}: not an Ed25519 public key")
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            self.keys[hashlib.sha256(raw).hexdigest()[:DIGEST_HEX_LENGTH]] = key

    def problem(self, shard: int, block: int, hash_hex: str, key_id: str, signature: str) -> str:
        key = self.keys.get(key_id)
        if key is None:
            known = ", ".join(sorted(self.keys))
            return f"signed by key {key_id or '(none)'}, which is not a verify key ({known})"
        try:
            key.verify(bytes.fromhex(signature), head_message(shard, block, hash_hex, key_id))
        except (self._invalid, ValueError):
            return f"signature does not verify with key {key_id} for shard {shard}"
        return ""


def file_name(schema_name: str, export_format: str) -> str:
    return f"{schema_name}.{export_format}"


def _csv_text(values: Sequence[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([str(value) for value in values])
    return buffer.getvalue()


def encode_line(schema: FileSchema, values: Sequence[object], export_format: str) -> str:
    """One row as written: its columns, then its line digest, then a newline."""
    digest = line_digest(values)
    if export_format == "csv":
        return _csv_text([*values, digest])
    keys = (*schema.columns, "line_digest")
    return json.dumps(dict(zip(keys, [*values, digest], strict=True)), **_JSON) + "\n"


_JSON: Final[dict[str, Any]] = {"ensure_ascii": False, "separators": (",", ":")}


class ExportWriter:
    """Writes one file of an export; counts its rows."""

    def __init__(self, directory: Path, schema: FileSchema, export_format: str) -> None:
        self.schema = schema
        self.format = export_format
        self.row_count = 0
        self._file = (directory / file_name(schema.name, export_format)).open(
            "w", encoding="utf-8", newline=""
        )
        if export_format == "csv":
            self._file.write(_csv_text([*schema.columns, "line_digest"]))

    def write(self, values: Sequence[object]) -> None:
        self._file.write(encode_line(self.schema, values, self.format))
        self.row_count += 1

    def close(self) -> None:
        self._file.close()


# ---- verification: stdlib only, from the files alone ----


@dataclass(frozen=True, slots=True)
class ExportError:
    file: str
    line: int  # 0: the file as a whole
    message: str

    def __str__(self) -> str:
        where = f"{self.file} line {self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class Errors:
    """Collects errors, keeping the first error_count_max and counting the rest."""

    def __init__(self, error_count_max: int) -> None:
        self.kept: list[ExportError] = []
        self.count = 0
        self.error_count_max = error_count_max

    def add(self, file: str, line: int, message: str) -> None:
        self.count += 1
        if len(self.kept) < self.error_count_max:
            self.kept.append(ExportError(file, line, message))


@dataclass(slots=True)
class Row:
    file: str
    line: int
    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def _decode_values(
    schema: FileSchema, text: str, export_format: str
) -> tuple[list[Any], str] | str:
    """(values, digest) parsed from one line (without its newline), or what is wrong."""
    width = len(schema.columns) + 1
    if export_format == "csv":
        if '"' in text:
            cells = next(csv.reader([text]), [])
            canonical = _csv_text(cells) == text + "\n"
        else:
            cells = text.split(",")
            # Unquoted, a line is canonical unless a field holds what csv.writer would quote.
            canonical = "\r" not in text
        if len(cells) != width:
            return f"{len(cells)} columns, expected {width}"
        if not canonical:
            return "not in canonical CSV form"
        return _typed_csv(schema, cells)
    try:
        loaded = json.loads(text)
    except ValueError as error:
        return f"not JSON ({error})"
    keys = [*schema.columns, "line_digest"]
    if not isinstance(loaded, dict) or list(loaded) != keys:
        return f"keys are not {', '.join(keys)} in that order"
    if json.dumps(loaded, **_JSON) != text:
        return "not in canonical JSON form"
    return _typed_json(schema, list(loaded.values()))


def _typed_csv(schema: FileSchema, cells: list[str]) -> tuple[list[Any], str] | str:
    values: list[Any] = cells[:-1]
    for index in schema.integer_indexes:
        text = values[index]
        try:
            number = int(text)
        except ValueError:
            return f"{schema.columns[index]} {text!r} is not an integer"
        if str(number) != text:  # int() also takes " 5", "+5", "05", "5_0"
            return f"{schema.columns[index]} {text!r} is not an integer in canonical form"
        values[index] = number
    return values, cells[-1]


def _typed_json(schema: FileSchema, raw: list[Any]) -> tuple[list[Any], str] | str:
    for name, value in zip(schema.columns, raw, strict=False):
        wanted = int if name in schema.integer_columns else str
        if type(value) is not wanted:  # exactly: a bool is not an integer here
            return f"{name} is not {'an integer' if wanted is int else 'a string'}"
    if not isinstance(raw[-1], str):
        return "line_digest is not a string"
    return raw[:-1], raw[-1]


def read_rows(path: Path, schema: FileSchema, export_format: str, errors: Errors) -> Iterator[Row]:
    """The rows of one file, each checked for form and digest; a bad line is reported at its
    file and line and skipped."""
    name = path.name
    if not path.exists():
        errors.add(name, 0, "file is missing")
        return
    with path.open("rb") as handle:
        line_number = 0
        if export_format == "csv":
            line_number = 1
            header = handle.readline()
            expected = _csv_text([*schema.columns, "line_digest"]).encode()
            if header != expected:
                errors.add(name, 1, "header is not " + expected.decode().strip())
        for raw in handle:
            line_number += 1
            row = _checked_row(name, line_number, raw, schema, export_format, errors)
            if row is not None:
                yield row


def _checked_row(
    name: str, line: int, raw: bytes, schema: FileSchema, export_format: str, errors: Errors
) -> Row | None:
    if not raw.endswith(b"\n"):
        errors.add(name, line, "the last line has no newline")
        raw += b"\n"
    try:
        text = raw[:-1].decode("utf-8")
    except UnicodeDecodeError as error:
        errors.add(name, line, f"not UTF-8 ({error.reason} at byte {error.start})")
        return None
    decoded = _decode_values(schema, text, export_format)
    if isinstance(decoded, str):
        errors.add(name, line, decoded)
        return None
    values, digest = decoded
    if line_digest(values) != digest:
        errors.add(name, line, f"line_digest {digest} does not match the line's columns")
    return Row(name, line, dict(zip(schema.columns, values, strict=True)))


class _Peekable:
    def __init__(self, rows: Iterator[Row]) -> None:
        self._rows = rows
        self.head: Row | None = next(rows, None)

    def take_block(self, block: int, errors: Errors) -> list[Row]:
        """The rows of `block`; rows of an earlier block (out of order or of a block not in
        blocks) are reported and dropped."""
        taken: list[Row] = []
        while self.head is not None and self.head["block"] <= block:
            row = self.head
            if row["block"] < block:
                errors.add(row.file, row.line, f"block {row['block']} is not at this place")
            else:
                taken.append(row)
            self.head = next(self._rows, None)
        return taken

    def rest(self) -> Iterator[Row]:
        while self.head is not None:
            yield self.head
            self.head = next(self._rows, None)


@dataclass(slots=True)
class _Balance:
    line: int
    currency: str
    opening: list[int]
    closing: list[int]
    posting_count: int
    running: list[int]
    seen_count: int = 0


@dataclass(slots=True)
class ShardVerification:
    directory: str
    export_format: str = ""
    block_count: int = 0
    posting_count: int = 0
    transaction_count: int = 0
    first_block: int = 0
    last_block: int = 0
    head_hash: str = ""
    # Blocks whose signature verified (with verify keys given; else 0).
    signed_count: int = 0
    # Per currency: [posted debits, posted credits, pending debits, pending credits].
    movements: dict[str, list[int]] = field(default_factory=dict)


@dataclass(slots=True)
class Verification:
    shards: list[ShardVerification]
    errors: list[ExportError]
    error_count: int
    signatures_checked: bool = False

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and bool(self.shards)


def shard_directories(directory: Path) -> list[Path]:
    """An export of one shard, or of several (shard-0, shard-1, ...)."""
    if any((directory / file_name("manifest", f)).exists() for f in FORMATS):
        return [directory]
    found = [p for p in directory.glob("shard-*") if p.is_dir() and p.name[6:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[6:]))


def verify_export(
    directory: Path,
    error_count_max: int = ERROR_COUNT_MAX_DEFAULT,
    keys: VerifyKeys | None = None,
) -> Verification:
    """Verify an export; with keys, every block's signature too (else only that no unsigned
    block follows a signed one)."""
    errors = Errors(error_count_max)
    shards = []
    directories = shard_directories(directory)
    if not directories:
        errors.add(str(directory), 0, "no manifest.csv or manifest.jsonl (nor shard-N/ in it)")
    for shard_directory in directories:
        shards.append(_ShardVerifier(shard_directory, errors, keys).run())
    return Verification(shards, errors.kept, errors.count, keys is not None)


class _ShardVerifier:
    def __init__(self, directory: Path, errors: Errors, keys: VerifyKeys | None = None) -> None:
        self.directory = directory
        self.errors = errors
        self.keys = keys
        self.last_signed = 0
        self.format = next(
            (f for f in FORMATS if (directory / file_name("manifest", f)).exists()), "csv"
        )
        self.result = ShardVerification(str(directory), self.format)
        self.manifest: dict[str, Row] = {}
        self.balances: dict[str, _Balance] = {}
        self.previous_hash = ""
        self.next_posting = 0
        self.counts = dict.fromkeys(JOURNAL_FILES, 0)

    def _file(self, schema_name: str) -> str:
        return file_name(schema_name, self.format)

    def _rows(self, schema_name: str) -> Iterator[Row]:
        path = self.directory / self._file(schema_name)
        return read_rows(path, SCHEMAS[schema_name], self.format, self.errors)

    def _error(self, row: Row, message: str) -> None:
        self.errors.add(row.file, row.line, message)

    def run(self) -> ShardVerification:
        if not self._read_manifest():
            return self.result
        self._read_balances()
        self._verify_blocks()
        self._verify_manifest_totals()
        self._verify_balances()
        self._verify_trial_balance()
        return self.result

    # ---- manifest and balances ----

    def _read_manifest(self) -> bool:
        for row in self._rows("manifest"):
            if row["key"] in self.manifest:
                self._error(row, f"{row['key']} appears twice")
            elif row["key"] not in MANIFEST_KEYS:
                self._error(row, f"{row['key']!r} is not a manifest key")
            self.manifest[row["key"]] = row
        missing = [key for key in MANIFEST_KEYS if key not in self.manifest]
        if missing:
            self.errors.add(self._file("manifest"), 0, "missing " + ", ".join(missing))
            return False
        if self.manifest["format"]["value"] != FORMAT:
            self._error(self.manifest["format"], f"format is not {FORMAT}")
            return False
        for key in MANIFEST_KEYS:
            row = self.manifest[key]
            numeric = key not in ("format", "shard", "anchor_hash", "head_hash")
            if numeric and not _INTEGER_TEXT.fullmatch(row["value"]):
                self._error(row, f"{key} {row['value']!r} is not an integer")
                return False
        self.previous_hash = self._manifest_text("anchor_hash")
        self.next_posting = self._manifest_int("first_posting_sequence")
        self.result.first_block = self._manifest_int("first_block")
        return True

    def _manifest_int(self, key: str) -> int:
        return int(self.manifest[key]["value"])

    def _manifest_text(self, key: str) -> str:
        return str(self.manifest[key]["value"])

    def _read_balances(self) -> None:
        for row in self._rows("balances"):
            account_id = row["account_id"]
            if account_id in self.balances:
                self._error(row, f"account {account_id} appears twice")
                continue
            opening = [row["opening_" + name] for name in _BALANCE_COUNTERS]
            closing = [row["closing_" + name] for name in _BALANCE_COUNTERS]
            self.balances[account_id] = _Balance(
                row.line, row["currency"], opening, closing, row["posting_count"], list(opening)
            )

    # ---- blocks ----

    def _verify_blocks(self) -> None:
        streams = {name: _Peekable(self._rows(name)) for name in JOURNAL_FILES}
        expected_block = self.result.first_block
        first = last = None
        for header in self._rows("blocks"):
            if header["block"] != expected_block:
                self._error(header, f"block {header['block']}, expected block {expected_block}")
            expected_block = header["block"] + 1
            rows = {
                name: streams[name].take_block(header["block"], self.errors) for name in streams
            }
            self._verify_block(header, rows)
            first, last = first or header, header
        self.result.last_block = expected_block - 1
        self._verify_period(first, last)
        for stream in streams.values():
            for row in stream.rest():
                self._error(row, f"block {row['block']} is not in the blocks file")

    def _verify_period(self, first: Row | None, last: Row | None) -> None:
        """The export's blocks run from the first created in the period to the last."""
        from_ns, to_ns = self._manifest_int("period_from_ns"), self._manifest_int("period_to_ns")
        if first is not None and from_ns and first["created_at_ns"] < from_ns:
            self._error(first, f"block {first['block']} was created before the period")
        if last is not None and to_ns and last["created_at_ns"] >= to_ns:
            self._error(last, f"block {last['block']} was created after the period")

    def _verify_block(self, header: Row, rows: dict[str, list[Row]]) -> None:
        block = header["block"]
        self.result.block_count += 1
        if header["previous_hash"] != self.previous_hash:
            self._error(
                header,
                f"block {block}: previous_hash {header['previous_hash']} is not the hash of "
                f"the block before ({self.previous_hash})",
            )
        for name in JOURNAL_FILES:
            self.counts[name] += len(rows[name])
            count_name = name[:-1] + "_count"
            if header[count_name] != len(rows[name]):
                self._error(
                    header,
                    f"block {block}: {count_name} {header[count_name]}, "
                    f"found {len(rows[name])} in {self._file(name)}",
                )
        self._verify_hash(header, rows)
        self._verify_signature(header)
        self._verify_postings(header, rows["postings"], rows["transactions"])
        self.previous_hash = header["hash"]
        self.result.head_hash = header["hash"]

    def _verify_hash(self, header: Row, rows: dict[str, list[Row]]) -> None:
        lines = []
        for name in JOURNAL_FILES:
            schema = SCHEMAS[name]
            for row in rows[name]:
                lines.append(journal_line(schema.journal_kind, list(row.values.values())[1:]))
        try:
            previous = bytes.fromhex(self.previous_hash)
        except ValueError:
            previous = b""
        recomputed = block_hash(previous, header["block"], lines).hex()
        if recomputed != header["hash"]:
            first = min((r.line for name in JOURNAL_FILES for r in rows[name]), default=0)
            self._error(
                header,
                f"block {header['block']}: hash {header['hash']} does not match its rows "
                f"(recomputed {recomputed}; its rows start at line {first} of each file)",
            )

    def _verify_signature(self, header: Row) -> None:
        """Unsigned after signed is an error; with keys, every block must verify."""
        block, key_id, signature = header["block"], header["key_id"], header["signature"]
        if not key_id and not signature:
            if self.keys is not None or self.last_signed:
                after = f", after block {self.last_signed}, which was signed"
                self._error(
                    header, f"block {block}: unsigned" + (after if self.last_signed else "")
                )
            return
        self.last_signed = block
        if self.keys is None:
            return
        shard_text = self._manifest_text("shard")
        if not _INTEGER_TEXT.fullmatch(shard_text):
            self._error(header, f"block {block}: shard {shard_text!r} is not an integer")
            return
        problem = self.keys.problem(int(shard_text), block, header["hash"], key_id, signature)
        if problem:
            self._error(header, f"block {block}: {problem}")
        else:
            self.result.signed_count += 1

    # ---- postings: sequence, transaction, balance-after chain, trial balance ----

    def _verify_postings(self, header: Row, postings: list[Row], transactions: list[Row]) -> None:
        by_id = {row["id"]: row for row in transactions}
        net: dict[tuple[str, str], list[int]] = {}
        for posting in postings:
            sequence = posting["sequence"]
            if sequence != self.next_posting:
                self._error(posting, f"posting {sequence}, expected posting {self.next_posting}")
            self.next_posting = sequence + 1
            transaction = by_id.get(posting["transaction_id"])
            if transaction is None or transaction["timestamp_ns"] != posting["timestamp_ns"]:
                self._error(
                    posting,
                    f"posting {sequence}: transaction {posting['transaction_id']} is not in "
                    f"block {header['block']} at timestamp {posting['timestamp_ns']}",
                )
            currency = self._apply_posting(posting)
            sign = 1 if posting["side"] == "D" else -1
            totals = net.setdefault((posting["transaction_id"], currency), [0, 0])
            totals[0] += sign * posting["posted_amount"]
            totals[1] += sign * posting["pending_delta"]
        if self.next_posting != header["next_posting_sequence"]:
            self._error(
                header,
                f"block {header['block']}: next_posting_sequence "
                f"{header['next_posting_sequence']}, but its postings end before "
                f"{self.next_posting}",
            )
            self.next_posting = header["next_posting_sequence"]
        for (transaction_id, currency), (posted, pending) in net.items():
            if posted or pending:
                self._error(
                    by_id.get(transaction_id, header),
                    f"transaction {transaction_id} is unbalanced in {currency}: debits minus "
                    f"credits {posted} posted, {pending} pending",
                )

    def _apply_posting(self, posting: Row) -> str:
        """Check the posting's balance-after against the account's running balance; returns
        the account's currency."""
        account_id = posting["account_id"]
        balance = self.balances.get(account_id)
        if balance is None:
            self._error(posting, f"account {account_id} is not in {self._file('balances')}")
            return "?"
        is_debit = posting["side"] == "D"
        if posting["side"] not in ("D", "C"):
            self._error(posting, f"side {posting['side']!r} is not D or C")
        offset = 0 if is_debit else 1
        balance.running[offset] += posting["posted_amount"]
        balance.running[offset + 2] += posting["pending_delta"]
        found = [posting[name + "_after"] for name in _BALANCE_COUNTERS]
        for name, expected, actual in zip(_BALANCE_COUNTERS, balance.running, found, strict=True):
            if expected != actual:
                self._error(
                    posting,
                    f"posting {posting['sequence']} ({account_id}): {name}_after {actual}, "
                    f"expected {expected} from the balance before it and its amounts",
                )
        balance.running = found
        balance.seen_count += 1
        movement = self.result.movements.setdefault(balance.currency, [0, 0, 0, 0])
        movement[offset] += posting["posted_amount"]
        movement[offset + 2] += posting["pending_delta"]
        self.result.posting_count += 1
        return balance.currency

    # ---- totals ----

    def _verify_manifest_totals(self) -> None:
        self.result.transaction_count = self.counts["transactions"]
        found = {
            "last_block": self.result.last_block,
            "head_hash": self.previous_hash,
            "next_posting_sequence": self.next_posting,
            "block_count": self.result.block_count,
            "balance_count": len(self.balances),
            **{name[:-1] + "_count": count for name, count in self.counts.items()},
        }
        for key, value in found.items():
            row = self.manifest[key]
            if str(value) != row["value"]:
                self._error(row, f"{key} {row['value']}, but the files give {value}")

    def _verify_balances(self) -> None:
        file = self._file("balances")
        for account_id, balance in self.balances.items():
            if balance.running != balance.closing:
                self.errors.add(
                    file,
                    balance.line,
                    f"account {account_id}: closing balance {balance.closing}, but its "
                    f"postings end at {balance.running}",
                )
            if balance.seen_count != balance.posting_count:
                self.errors.add(
                    file,
                    balance.line,
                    f"account {account_id}: posting_count {balance.posting_count}, found "
                    f"{balance.seen_count}",
                )

    def _verify_trial_balance(self) -> None:
        for currency, (dp, cp, dq, cq) in sorted(self.result.movements.items()):
            if dp != cp or dq != cq:
                self.errors.add(
                    self._file("postings"),
                    0,
                    f"trial balance {currency}: posted debits {dp}, credits {cp}; pending "
                    f"debits {dq}, credits {cq}",
                )


def format_verification(verification: Verification) -> str:
    lines = []
    for shard in verification.shards:
        lines.append(
            f"{shard.directory}: blocks {shard.first_block}..{shard.last_block} "
            f"({shard.block_count}), {shard.transaction_count} transactions, "
            f"{shard.posting_count} postings, head hash {shard.head_hash or '-'}"
        )
        if verification.signatures_checked:
            lines.append(f"  signatures: {shard.signed_count} of {shard.block_count} blocks verify")
        for currency, (dp, cp, dq, cq) in sorted(shard.movements.items()):
            lines.append(
                f"  {currency}: posted debits {dp} credits {cp}, pending debits {dq} credits {cq}"
            )
    for error in verification.errors:
        lines.append(f"FAIL {error}")
    hidden = verification.error_count - len(verification.errors)
    if hidden:
        lines.append(f"... and {hidden} more errors")
    lines.append("export verifies" if verification.ok else "export does NOT verify")
    return "\n".join(lines)


def load_verify_keys(paths: Sequence[str]) -> VerifyKeys | None:
    """The public keys of --verify-key (None: none given); SignatureSupportMissing, OSError or
    ValueError saying what is wrong."""
    if not paths:
        return None
    return VerifyKeys([(path, Path(path).read_bytes()) for path in paths])


def main(argv: list[str] | None = None) -> int:
    """`python3 export.py DIR [--verify-key PUBLIC_KEY ...]`: verify an export with nothing but
    this file (and `cryptography`, only to check signatures)."""
    arguments = sys.argv[1:] if argv is None else argv
    paths, keys = [], []
    while arguments:
        argument, arguments = arguments[0], arguments[1:]
        if argument == "--verify-key" and arguments:
            keys.append(arguments[0])
            arguments = arguments[1:]
        else:
            paths.append(argument)
    if len(paths) != 1 or paths[0].startswith("-"):
        print("usage: python3 export.py EXPORT_DIRECTORY [--verify-key PEM ...]", file=sys.stderr)
        return 2
    try:
        verify_keys = load_verify_keys(keys)
    except (SignatureSupportMissing, OSError, ValueError) as error:
        print(f"export.py: {error}", file=sys.stderr)
        return 2
    verification = verify_export(Path(paths[0]), keys=verify_keys)
    print(format_verification(verification))
    return 0 if verification.ok else 1


if __name__ == "__main__":
    sys.exit(main())
