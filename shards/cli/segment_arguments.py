"""The arguments of `tally segments` (write, archive, verify), apart from the code that runs
them (shards.cli.segments, imported when the command is asked for): every `tally` process builds
the whole parser, and this keeps pyarrow out of a node's or a gateway's start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from core.store.cold.sizes import BLOCKS_PER_SEGMENT_DEFAULT, SEGMENT_BLOCK_COUNT_MAX

COMMANDS: Final = ("segments",)


def add_command(commands: Any) -> None:
    segments = commands.add_parser("segments", help="a shard's journal as cold segments")
    actions = segments.add_subparsers(dest="segments_action", required=True)
    write = actions.add_parser("write", help="continue a directory's segments from a shard")
    move = actions.add_parser(
        "archive", help="write segments, then move them out of the shard's database"
    )
    verify = actions.add_parser("verify", help="verify a directory's segments")
    for parser in (write, move):
        parser.add_argument("--dir", type=Path, required=True, help="the shard's segments")
    verify.add_argument("--dir", type=Path, help="the shards' segments in a directory")
    for parser in (move, verify):
        parser.add_argument(
            "--store",
            default="",
            metavar="URL",
            help="the shards' segments in an object store: s3://BUCKET/PREFIX?endpoint="
            "http://HOST:PORT&region=R (credentials from AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY)"
            + ("; --dir is then the staging directory" if parser is move else ""),
        )
    for parser in (write, move, verify):
        parser.add_argument(
            "--dsn",
            default=os.environ.get("TALLY_DSN"),
            help="the shard's database (default: $TALLY_DSN)",
        )
    for parser in (write, move):
        parser.add_argument(
            "--older-than",
            default="0s" if parser is write else "90d",
            metavar="DURATION",
            help="only blocks created before now minus this: 90d, 12h, 30m, 0s (default "
            + ("0s)" if parser is write else "90d, a quarter of history stays hot)"),
        )
        parser.add_argument(
            "--blocks-per-segment",
            type=int,
            default=BLOCKS_PER_SEGMENT_DEFAULT,
            help=f"at most this many blocks a segment (1 to {SEGMENT_BLOCK_COUNT_MAX})",
        )
    move.add_argument(
        "--every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="archive again every SECONDS until stopped (default 0: once)",
    )
