"""The README's terminal example: its steps, and a way to run one as a user would.

Shared by the tests that run the example against `tally up` (tests/shards/cli/test_readme.py,
as the README's user: no credentials given, tally up's found) and through a gateway
(tests/shards/gateway/test_cluster.py, with the tests' credentials).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from pathlib import Path

from tests.support import local_up, security
from tests.support.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
# Times differ from run to run: compared as this placeholder.
TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6} UTC")


def example_steps() -> list[tuple[str, list[str]]]:
    """Each `$ tally ...` command of the example with the output lines that follow it."""
    text = README.read_text()
    block = text.split("<!-- example:start -->", 1)[1].split("<!-- example:end -->", 1)[0]
    lines = block.strip().strip("`").strip().splitlines()
    steps: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


async def run_tally(command: str, port: int, user_of_up_in: Path | None = None) -> str:
    """Its stdout and stderr, run as `python -m shards.cli` against 127.0.0.1:port.

    By default it presents the tests' admin identity (TALLY_CA, TALLY_CERT, TALLY_KEY: every
    role, every account). With user_of_up_in, it runs as the README's user of a `tally up`
    started in that directory: there, with no TALLY_* variable and no credentials flag, so it
    finds tally up's admin identity in .tally/tls by itself."""
    words = shlex.split(command)
    assert words[0] == "tally"
    target = f"--target=127.0.0.1:{port}"
    if user_of_up_in is not None:
        _, output = await local_up.run_as_user(user_of_up_in, [*words[1:], target])
        return output
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shards.cli",
        *words[1:],
        target,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **security.client_environment()},
    )
    output_bytes, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return output_bytes.decode()
