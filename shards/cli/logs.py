"""The log of every tally process, on stderr: JSON lines (the default) or text for people.

JSON: one object a line, whatever the message holds. Fields: time (local, as logging's
asctime: "2026-11-26 06:01:39,727"), level, logger, message; and, when there is one, exception
(the traceback), stack, and security (the fields of a security-log record: event, listener,
method, code, reason, peer, subject, credential, via). json.dumps escapes quotes, backslashes,
newlines and control characters, and ensure_ascii keeps each line ASCII, so every line parses
whatever the locale's encoding. A message with nothing to escape gives the line the old format
string gave, byte for byte.

The stdlib's logging with a json.dumps formatter rather than structlog: every logger in Tally
(and in asyncio and grpc) is a stdlib logger with %-style messages, so a Formatter is the whole
change; structlog would bring a second logging API and a processor chain to write these same
lines, and nothing here logs key-value events it would help with.

Secrets: every line, in either format, is scrubbed (core.dsn.scrub) of the secrets of the
process's DSNs (given to start_logging) and of anything shaped like a DSN secret; so is the
traceback of an exception nobody caught. A driver's error that quoted a DSN would otherwise
write its password into a log file.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import Final, TextIO

from core import dsn as dsn_text

LOG_FORMATS: Final = ("json", "text")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# For a person reading a terminal; a logged exception's traceback follows on its own lines.
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The secrets of this process's DSNs (hide_secrets), scrubbed from every line.
_hidden: set[str] = set()


def hide_secrets(dsns: Iterable[str]) -> None:
    """From now on, no line this process logs holds a secret of these DSNs."""
    for dsn in dsns:
        _hidden.update(dsn_text.secrets_of(dsn))


def scrub(text: str) -> str:
    """text without the hidden secrets, nor anything shaped like a DSN secret."""
    return dsn_text.scrub(text, _hidden)


class ScrubbingFormatter(logging.Formatter):
    """logging's own Formatter, its lines scrubbed of secrets."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class JsonLineFormatter(logging.Formatter):
    """A record as one line of JSON (the fields above)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = scrub(self.formatStack(record.stack_info))
        # The security log's structured fields (shards/security/guard.py), as an object.
        fields = getattr(record, "security", None)
        if isinstance(fields, dict):
            entry["security"] = {key: scrub(str(value)) for key, value in fields.items()}
        # Compact, as the lines were when a format string made them: the same bytes whenever
        # the message has nothing to escape.
        return json.dumps(entry, separators=(",", ":"))


def log_handler(stream: TextIO, log_format: str) -> logging.Handler:
    """A handler writing to `stream` in `log_format` (one of LOG_FORMATS)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream)
    formatter = JsonLineFormatter() if log_format == "json" else ScrubbingFormatter(_TEXT_FORMAT)
    handler.setFormatter(formatter)
    return handler


def start_logging(
    level: str,
    log_format: str = "json",
    stream: TextIO | None = None,
    secret_dsns: Iterable[str] = (),
) -> None:
    """Records at `level` (one of LOG_LEVELS) and above to `stream` (stderr) in `log_format`,
    without the secrets of secret_dsns (nor any DSN-shaped secret); an uncaught exception's
    traceback is scrubbed the same way. Like logging.basicConfig, which it uses, it does
    nothing if the root logger already has a handler (a process embedding tally configures its
    own logging)."""
    hide_secrets(secret_dsns)
    handler = log_handler(sys.stderr if stream is None else stream, log_format)
    logging.basicConfig(level=level, handlers=[handler])
    sys.excepthook = _scrubbed_excepthook


def _scrubbed_excepthook(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    """Python's own report of an uncaught exception, scrubbed of secrets."""
    sys.stderr.write(scrub("".join(traceback.format_exception(kind, error, trace))))
    sys.stderr.flush()
