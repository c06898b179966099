"""No tally process writes a DSN secret into its log: a line, a logged exception and an uncaught
exception's traceback quoting the DSN are all scrubbed, in JSON and in text; and a node whose
database refuses its password says so without the password."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shards.local.embedded_pg import EmbeddedPostgres
from tests.support.paths import REPO_ROOT
from tests.support.processes import spawn_node

SECRET_DSN = "postgresql://postgres:Zq-url-secret@127.0.0.1:5432/db"
UNTOLD_DSN = "host=127.0.0.1 user=u password='Zq kw secret' dbname=db"

# A fresh interpreter: logging is set up once per process, as `tally` does in main().
_PROGRAM = """
import logging, sys
from shards.cli.logs import start_logging

start_logging("INFO", sys.argv[1], secret_dsns=[sys.argv[2]])
log = logging.getLogger("tally.test")
log.warning("connecting to %s", sys.argv[2])
log.warning("and to %s", sys.argv[3])  # a DSN it was not told about
try:
    raise ConnectionError(f"cannot reach {sys.argv[2]}")
except ConnectionError:
    log.exception("start failed")
raise RuntimeError(f"gave up on {sys.argv[2]} and {sys.argv[3]}")
"""


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_lines_exceptions_and_uncaught_tracebacks_are_scrubbed(log_format: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, log_format, SECRET_DSN, UNTOLD_DSN],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Zq" not in done.stderr, done.stderr
    assert "postgresql://postgres:***@127.0.0.1:5432/db" in done.stderr
    assert "user=u password=***" in done.stderr and "dbname=db" in done.stderr
    assert "ConnectionError" in done.stderr and "RuntimeError: gave up on" in done.stderr
    if log_format == "json":
        lines = done.stderr.splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        assert [e["message"].split(" ")[0] for e in entries] == ["connecting", "and", "start"]
        assert "ConnectionError" in entries[2]["exception"]


async def test_a_node_refused_by_its_database_logs_no_password(
    pg: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    wrong = dsn.replace(pg.password, "Zq-wrong-password")
    with pytest.raises(AssertionError) as raised:
        await spawn_node(wrong, tmp_path, "refused", timeout_s=30)
    log = (tmp_path / "refused.stderr.log").read_text()
    assert "password authentication failed" in log
    for text in (log, str(raised.value)):
        assert "Zq" not in text and pg.password not in text
