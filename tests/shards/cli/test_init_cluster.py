"""`tally init-cluster`, the one-shot init of deploy/'s compose file and Kubernetes Job: the slot
map is made once, kept on a second run (a larger shard count names the shards added), and a
count that would leave a shard owning slots unserved is refused."""

from __future__ import annotations

import asyncio
import os

import pytest

from core.store import control as control_store
from shards import control
from shards.cli.main import main
from shards.local.embedded_pg import EmbeddedPostgres


async def test_makes_the_slot_map_once(
    pg: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"t{os.getpid()}_init_cluster"
    await pg.create_database_async(name)
    # As the deploy files give it: in the environment, never on the command line.
    monkeypatch.setenv("TALLY_CONTROL_DSN", pg.dsn(name))
    assert await asyncio.to_thread(main, ["init-cluster", "--shards", "2"]) == 0
    assert "slot map version 1, shards 2" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["init-cluster", "--shards", "2"]) == 0
    # A shard added: the map is kept, and the new shard is named as owning no slots yet.
    assert await asyncio.to_thread(main, ["init-cluster", "--shards", "3"]) == 0
    assert "shards [2] own no slots yet" in capsys.readouterr().out
    # Fewer shards than own slots would leave slots unserved.
    assert await asyncio.to_thread(main, ["init-cluster", "--shards", "1"]) == 2
    assert "would leave shards [1] unserved" in capsys.readouterr().err
    connection = await control.connect(pg.dsn(name))
    try:
        slot_map = await control_store.load_slot_map(connection)
    finally:
        await connection.close()
    assert slot_map is not None and slot_map.shard_ids == (0, 1)


def test_needs_a_control_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TALLY_CONTROL_DSN", raising=False)
    assert main(["init-cluster", "--shards", "2"]) == 2
    assert "give --control-dsn or set TALLY_CONTROL_DSN" in capsys.readouterr().err
