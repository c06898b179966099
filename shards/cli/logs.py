"""The log of every tally process, on stderr: JSON lines (the default) or text for people.

JSON: one object a line, whatever the message holds. Fields: time (local, as logging's
asctime: "2026-11-26 06:01:39,727"), level, logger, message; and, when there is one, exception
(the traceback) and stack. json.dumps escapes quotes, backslashes, newlines and control
characters, and ensure_ascii keeps each line ASCII, so every line parses whatever the locale's
encoding. A message with nothing to escape gives the line the old format string gave, byte for
byte.

The stdlib's logging with a json.dumps formatter rather than structlog: every logger in Tally
(and in asyncio and grpc) is a stdlib logger with %-style messages, so a Formatter is the whole
change; structlog would bring a second logging API and a processor chain to write these same
lines, and nothing here logs key-value events it would help with.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Final, TextIO

LOG_FORMATS: Final = ("json", "text")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# For a person reading a terminal; a logged exception's traceback follows on its own lines.
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLineFormatter(logging.Formatter):
    """A record as one line of JSON (the fields above)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Compact, as the lines were when a format string made them: the same bytes whenever
        # the message has nothing to escape.
        return json.dumps(entry, separators=(",", ":"))


def log_handler(stream: TextIO, log_format: str) -> logging.Handler:
    """A handler writing to `stream` in `log_format` (one of LOG_FORMATS)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream)
    formatter = JsonLineFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT)
    handler.setFormatter(formatter)
    return handler


def start_logging(level: str, log_format: str = "json", stream: TextIO | None = None) -> None:
    """Records at `level` (one of LOG_LEVELS) and above to `stream` (stderr) in `log_format`.
    Like logging.basicConfig, which it uses, it does nothing if the root logger already has a
    handler (a process embedding tally configures its own logging)."""
    handler = log_handler(sys.stderr if stream is None else stream, log_format)
    logging.basicConfig(level=level, handlers=[handler])
