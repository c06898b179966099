"""The README's terminal example, run for real as the README says: `make up` (here `tally up`
in a fresh directory, its data in .tally there), then in a second terminal the same `tally ...`
commands, unchanged, which find tally up's admin identity in .tally/tls by themselves. Output
compared line by line."""

from __future__ import annotations

from pathlib import Path

from tests.support.local_up import running_up, scratch_directory, wait_serving
from tests.support.readme import TIME, example_steps, run_tally


async def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    steps = example_steps()
    assert len(steps) >= 10
    with scratch_directory() as checkout:
        async with running_up(tmp_path / "up.log", cwd=checkout) as up:
            await wait_serving(up)
            for command, expected in steps:
                output = await run_tally(command, up.port, user_of_up_in=checkout)
                got = [TIME.sub("<time>", line) for line in output.rstrip("\n").splitlines()]
                want = [TIME.sub("<time>", line) for line in expected]
                assert got == want, f"$ {command}"
