"""The node's signing key and the publisher of its signed journal heads.

`--signing-key PATH` names an Ed25519 private key (PEM) the writer signs every block's head
with (core/signing.py); the key is read once at start and never written to the database.

`--publish-heads DIR` appends each signed head, as one JSON line, to DIR/shard-N.heads.jsonl:
a copy of the chain's heads kept outside the database, which an auditor compares with the
database (`tally audit --published-heads DIR`). Heads are published AFTER their commit, in
commit order, by one thread that writes, flushes and fsyncs them in groups:

- after, never before or with it: a published head must never name a block that was rolled
  back, and only a finished commit says it was not (acknowledged means committed);
- not waited for by the clients: the database commit is the durable record and the file is a
  witness, so a second disk flush per batch stays off the commit's latency. A crash can leave
  the newest heads unpublished; the next writer on the shard publishes the signed heads after
  the file's last line before it writes (each checked against its own key first, so it never
  republishes a head it did not sign).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

from core import signing
from core.journal import BlockHeader
from core.store import shard as store

log = logging.getLogger("tally.node.heads")

CATCH_UP_CHUNK = 10_000
_TAIL_BYTES = 4096


def load_signer(path: str) -> signing.Signer:
    """The node's signing key; SigningKeyError (or OSError) saying what is wrong."""
    key_path = Path(path)
    data = key_path.read_bytes()
    if os.name == "posix" and key_path.stat().st_mode & 0o077:
        log.warning("signing key %s is readable by others (chmod 600 it)", path)
    return signing.Signer(signing.load_private(data, path))


def heads_path(directory: Path, shard_id: int) -> Path:
    return directory / f"shard-{shard_id}.heads.jsonl"


def last_published_block(path: Path) -> int:
    """The block of the file's last complete line (0: none)."""
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - _TAIL_BYTES))
        lines = handle.read().split(b"\n")
    # The last piece is "" (the file ends with a newline) or a torn line; the first may be cut.
    for raw in reversed(lines[:-1]):
        try:
            return signing.parse_head_line(raw.decode()).block
        except (ValueError, UnicodeDecodeError):
            continue
    return 0


def _drop_torn_line(path: Path) -> None:
    """A crash mid-append can leave a last line without its newline: it was never a whole
    published head, so cut it before appending after it."""
    if not path.exists():
        return
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(max(0, size - _TAIL_BYTES))
        tail = handle.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        if cut < 0 and size > len(tail):
            return  # not a file of heads lines: leave it to the auditor
        keep = size - len(tail) + cut + 1 if cut >= 0 else 0
        log.warning("%s ends with a torn line; cutting it at byte %d", path, keep)
        handle.truncate(keep)


class HeadPublisher:
    """Appends signed heads to the shard's heads file from one thread, fsync'd per group."""

    def __init__(self, directory: Path, shard_id: int) -> None:
        self.shard_id = shard_id
        self.path = heads_path(directory, shard_id)
        self._queue: queue.SimpleQueue[BlockHeader | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.published_count = 0
        self.failed_count = 0

    async def catch_up(self, connection: Any, signer: signing.Signer, head: int) -> int:
        """Publish the signed heads after the file's last line (a crash can leave some out);
        returns how many. Run before the writer starts, so nothing else appends meanwhile."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_line(self.path)
        last = last_published_block(self.path)
        if last > head:
            log.error(
                "%s names block %d, beyond the database's last block %d: the database was "
                "restored or rewritten (tally audit --published-heads shows which)",
                self.path,
                last,
                head,
            )
            return 0
        verifier = signing.Verifier((signing.VerifyKey(signer.key_id, signer.public_key),))
        count = 0
        while rows := await store.signed_heads_after(connection, last, CATCH_UP_CHUNK, 30.0):
            lines = []
            for sequence, hash_, key_id, signature in rows:
                problem = verifier.problem(self.shard_id, sequence, hash_, key_id, signature)
                if problem:
                    log.warning("not republishing block %d: %s", sequence, problem)
                else:
                    lines.append(self._line(sequence, hash_, key_id, signature))
            self._append(lines)
            count += len(lines)
            last = rows[-1][0]
        return count

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="heads-publisher", daemon=True)
        self._thread.start()

    def publish(self, header: BlockHeader) -> None:
        """The writer's HeadSink: O(1) on the writer's loop, the writing is the thread's."""
        if header.key_id:
            self._queue.put(header)

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _line(self, sequence: int, hash_: bytes, key_id: str, signature: bytes) -> str:
        head = signing.Head(self.shard_id, sequence, hash_.hex(), key_id, signature.hex())
        return signing.head_line(head)

    def _append(self, lines: list[str]) -> None:
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())

    def _run(self) -> None:
        stopping = False
        while not stopping:
            headers = [self._queue.get()]
            while not self._queue.empty():  # a group per fsync
                headers.append(self._queue.get_nowait())
            if headers[-1] is None or None in headers:
                stopping = True
            lines = [
                self._line(h.sequence, h.hash, h.key_id, h.signature)
                for h in headers
                if h is not None
            ]
            try:
                self._append(lines)
                self.published_count += len(lines)
            except OSError as error:  # the ledger keeps serving; the gap is logged
                self.failed_count += len(lines)
                log.error("publishing %d heads to %s failed: %r", len(lines), self.path, error)
