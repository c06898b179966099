"""The README's terminal example, run for real against a node, output compared line by line."""

from __future__ import annotations

from tests.support.readme import TIME, example_steps, run_tally


async def test_readme_example_runs_as_written(node) -> None:
    steps = example_steps()
    assert len(steps) >= 10
    for command, expected in steps:
        output = await run_tally(command, node.port)
        got = [TIME.sub("<time>", line) for line in output.rstrip("\n").splitlines()]
        want = [TIME.sub("<time>", line) for line in expected]
        assert got == want, f"$ {command}"
