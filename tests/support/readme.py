"""The README's terminal example: its `$ tally ...` steps with their expected output, and the
CLI run as a reader would run it, against a given port."""

from __future__ import annotations

import asyncio
import re
import shlex
import sys

from tests.support.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
# Timestamps differ from run to run; both sides are compared with them masked.
TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6} UTC")


def example_steps() -> list[tuple[str, list[str]]]:
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


async def run_tally(command: str, port: int) -> str:
    words = shlex.split(command)
    assert words[0] == "tally"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shards.cli",
        *words[1:],
        f"--target=127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return output.decode()
