"""The README's terminal example, run for real against a node, output compared line by line."""

from __future__ import annotations

import asyncio
import re
import shlex
import sys

from tests.support.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
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


async def test_readme_example_runs_as_written(node) -> None:
    steps = example_steps()
    assert len(steps) >= 10
    for command, expected in steps:
        output = await run_tally(command, node.port)
        got = [TIME.sub("<time>", line) for line in output.rstrip("\n").splitlines()]
        want = [TIME.sub("<time>", line) for line in expected]
        assert got == want, f"$ {command}"
