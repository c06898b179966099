"""Every `tally` process builds the whole parser, so what the parser imports every node and
gateway start pays: the audit's code and pyarrow (cold segments) are imported only by the
commands that run them."""

from __future__ import annotations

import subprocess
import sys

from core.audit import export
from core.store.cold import archive, format
from shards.audit import arguments
from shards.cli import segment_arguments
from tests.support.paths import REPO_ROOT

PROBE = """
import sys
from shards.cli import main
main.build_parser().parse_args(["node", "--shard-id", "0", "--dsn", "postgresql://unused"])
heavy = ("pyarrow", "numpy", "core.audit", "core.store.cold.format", "shards.audit.commands",
         "shards.audit.server", "shards.cli.segments")
print(",".join(name for name in heavy if name in sys.modules))
"""


def test_a_node_parses_its_arguments_without_the_audits_code_or_pyarrow() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "", done.stdout


def test_the_parsers_name_what_the_commands_use() -> None:
    assert arguments.EXPORT_FORMATS == export.FORMATS
    assert format.SEGMENT_BLOCK_COUNT_MAX == segment_arguments.SEGMENT_BLOCK_COUNT_MAX
    assert archive.BLOCKS_PER_SEGMENT_DEFAULT == segment_arguments.BLOCKS_PER_SEGMENT_DEFAULT
