"""shards.cli.logs: every line a tally process logs parses as JSON, whatever the message holds."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from shards.cli.logs import JsonLineFormatter, log_handler
from shards.cli.main import build_parser
from tests.support.paths import REPO_ROOT

NASTY_MESSAGES = [
    'a "quoted" word',
    "two\nlines\r\nand a tab\there",
    "back\\slash \\n not a newline, \\u0041",
    '{"message": "a JSON object inside"}',
    "control \x00\x01\x1b[31m characters",
    "non-ASCII: Grüße, 円, \U0001f4b8",
    "%d looks like a format but has no arguments",
    "",
]

# Run in a fresh interpreter: logging is set up once per process, as `tally` does in main().
_PROGRAM = """
import json, logging, sys
from shards.cli.logs import start_logging

start_logging("INFO", "json")
log = logging.getLogger("tally.test")
for message in json.loads(sys.argv[1]):
    log.warning("%s", message)
log.info("an argument with a quote: %r", 'it\\'s "here"')
log.debug("below the level: not written")
try:
    {}["missing \\"key\\"\\n"]
except KeyError:
    log.exception('lookup "failed"')
log.error("where from", stack_info=True)
"""


def test_every_line_parses_as_json_with_the_fields_of_the_old_format() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, json.dumps(NASTY_MESSAGES)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(entries) == len(NASTY_MESSAGES) + 3
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
        assert entry["logger"] == "tally.test"
    assert [entry["message"] for entry in entries[: len(NASTY_MESSAGES)]] == NASTY_MESSAGES
    assert entries[0]["level"] == "WARNING"
    assert entries[len(NASTY_MESSAGES)]["message"] == "an argument with a quote: 'it\\'s \"here\"'"
    failed = entries[-2]
    assert (failed["level"], failed["message"]) == ("ERROR", 'lookup "failed"')
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].endswith("KeyError: 'missing \"key\"\\n'")
    assert entries[-1]["stack"].startswith("Stack (most recent call last):")
    assert done.stderr.isascii()


def test_a_plain_message_gives_the_line_the_old_format_string_gave() -> None:
    record = logging.LogRecord("tally.x", logging.INFO, __file__, 1, "port %d", (7400,), None)
    old_format = logging.Formatter(
        '{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}'
    )
    assert JsonLineFormatter().format(record) == old_format.format(record)


def test_text_for_people() -> None:
    stream = io.StringIO()
    log = logging.getLogger("tally.test-text")
    log.propagate = False
    log.addHandler(log_handler(stream, "text"))
    try:
        log.warning('a "quoted" word')
    finally:
        log.handlers.clear()
    assert stream.getvalue().endswith(' WARNING tally.test-text: a "quoted" word\n')


def test_every_command_takes_the_log_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = build_parser().parse_args(["show", "a"])
    assert (defaults.log_format, defaults.log_level) == ("json", "INFO")
    given = build_parser().parse_args(["up", "--log-format=text", "--log-level=debug"])
    assert (given.log_format, given.log_level) == ("text", "DEBUG")
    monkeypatch.setenv("TALLY_LOG_FORMAT", "text")
    monkeypatch.setenv("TALLY_LOG_LEVEL", "WARNING")
    from_environment = build_parser().parse_args(["node", "--dsn=x"])
    assert (from_environment.log_format, from_environment.log_level) == ("text", "WARNING")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gateway", "--control-dsn=x", "--log-format=xml"])
