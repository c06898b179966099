"""`tally up` locks its data directory for as long as it runs (real processes): a second `tally
up` on it is refused at once, naming the directory and the pid that holds it, and exits
non-zero without touching anything (the first still serves: its PostgreSQL was not stopped
under it); a kill -9 of the first frees the directory (the lock is the kernel's, on an open
file), and its children go with it, so the next `tally up` there serves at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.slots import SlotMap
from shards.local import data_lock
from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import Client, account, transfer
from tests.support.local_up import (
    LocalUp,
    running_up,
    user_environment,
    wait_serving,
)
from tests.support.paths import REPO_ROOT
from tests.support.processes import child_pids

REFUSAL_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0
APPLIED = {pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED}


# ------------------------------------------------------------------ the lock on its own


def test_a_second_lock_on_a_directory_is_refused_naming_it_and_its_holder(tmp_path: Path) -> None:
    held = data_lock.acquire(tmp_path)
    try:
        with pytest.raises(data_lock.DataDirectoryInUse) as raised:
            data_lock.acquire(tmp_path)
        assert raised.value.pid == os.getpid()
        assert str(tmp_path.resolve()) in str(raised.value)
        assert f"pid {os.getpid()}" in str(raised.value)
    finally:
        held.release()
    data_lock.acquire(tmp_path).release()  # released: free again


async def test_a_kill_9_of_the_holder_frees_the_lock(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from shards.local import data_lock\n"
        f"lock = data_lock.acquire({str(tmp_path)!r})\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), timeout=30)
        assert line == b"locked\n"
        with pytest.raises(data_lock.DataDirectoryInUse) as raised:
            data_lock.acquire(tmp_path)
        assert raised.value.pid == holder.pid
        holder.kill()
        await asyncio.wait_for(holder.wait(), timeout=30)
        data_lock.acquire(tmp_path).release()
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        await holder.wait()


# ------------------------------------------------------------------ tally up


async def _tally_up_again(data_dir: Path, log: Path) -> tuple[int | None, str, float]:
    """A second `tally up` on data_dir: (its exit code, all it printed, seconds it took). If it
    has not exited within the bound it is stopped with Ctrl-C (as a user would), and its exit
    code is None."""
    started = time.monotonic()
    with log.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shards.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env=user_environment(),
            cwd=REPO_ROOT,
            start_new_session=True,
        )
    reading = asyncio.ensure_future(process.communicate())
    code: int | None = None
    try:
        await asyncio.wait_for(asyncio.shield(reading), timeout=REFUSAL_TIMEOUT_S)
        code = process.returncode
    except TimeoutError:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(asyncio.shield(reading), timeout=EXIT_TIMEOUT_S)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    output, _ = await reading
    seconds = time.monotonic() - started
    return code, output.decode() + _text_of(log), seconds


def _text_of(path: Path) -> str:
    return path.read_text(errors="replace")


async def _post_applied(up: LocalUp, *transactions: pb.Transaction) -> None:
    async with up.channel() as channel:
        results = await Client(channel).post(*transactions)
    assert {r.code for r in results} <= APPLIED, results


async def test_a_second_tally_up_on_the_same_directory_is_refused(
    scratch: Path, tmp_path: Path
) -> None:
    data_dir = (scratch / "data").resolve()
    async with running_up(tmp_path / "first.log", data_dir=data_dir) as first:
        await wait_serving(first)
        async with first.channel() as channel:
            client = Client(channel)
            assert set(await client.create(account("@bank"), account("cust-1/dep"))) == {
                pb.RESULT_CODE_CREATED
            }
        code, said, seconds = await _tally_up_again(data_dir, tmp_path / "second.log")
        assert code is not None and code != 0, said
        assert seconds < REFUSAL_TIMEOUT_S
        assert f"{data_dir} is in use by another tally up (pid {first.child.pid})" in said, said
        assert "tally: serving" not in said and "starting PostgreSQL" not in said, said
        # Nothing of the first was stopped under it: it still writes.
        await _post_applied(first, transfer("after-refusal", "@bank", "cust-1/dep", 5))
        assert (data_dir / data_lock.LOCK_FILE).read_text().strip() == str(first.child.pid)


def _customer_on_each_shard(shard_count: int) -> list[str]:
    slot_map = SlotMap.even(shard_count)
    chosen: dict[int, str] = {}
    for n in range(10_000):
        chosen.setdefault(slot_map.shard_of_key(f"cust-{n}"), f"cust-{n}")
        if len(chosen) == shard_count:
            break
    return [chosen[shard] for shard in range(shard_count)]


@contextlib.asynccontextmanager
async def _group_killed_afterwards(up: LocalUp) -> AsyncIterator[None]:
    """Whatever the first tally up left behind (its process group) is killed on the way out."""
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.child.pid, signal.SIGKILL)


async def _wait_gone(pids: list[int], timeout_s: float = EXIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while alive := [pid for pid in pids if _running(pid)]:
        assert time.monotonic() < deadline, f"still running after their parent died: {alive}"
        await asyncio.sleep(0.1)


def _running(pid: int) -> bool:
    """pid exists and is not a zombie."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


async def test_a_kill_9_of_tally_up_frees_its_directory_and_its_children_go_with_it(
    scratch: Path, tmp_path: Path
) -> None:
    data_dir = (scratch / "data").resolve()
    a, b = _customer_on_each_shard(2)
    arguments = ["--shards", "2"]
    async with running_up(tmp_path / "first.log", arguments, data_dir=data_dir) as first:
        async with _group_killed_afterwards(first):
            await wait_serving(first)
            async with first.channel() as channel:
                client = Client(channel)
                accounts = [account("@bank"), account(f"{a}/d"), account(f"{b}/d")]
                assert set(await client.create(*accounts)) == {pb.RESULT_CODE_CREATED}
            children = child_pids(first.child.pid)
            assert len(children) >= 4  # two nodes, the gateway, the audit server
            os.kill(first.child.pid, signal.SIGKILL)
            await first.child.wait(EXIT_TIMEOUT_S)
            await _wait_gone(children)
            async with running_up(tmp_path / "second.log", arguments, data_dir=data_dir) as second:
                await wait_serving(second)
                await _post_applied(
                    second,
                    transfer("fund-a", "@bank", f"{a}/d", 100),
                    transfer("fund-b", "@bank", f"{b}/d", 100),
                    transfer("across", f"{a}/d", f"{b}/d", 10),
                )
