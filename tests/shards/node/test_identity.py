"""A shard database knows which shard it is: a node started with another --shard-id refuses it.

The first node to start on a shard database records its shard id there (a node without a
control database is the single shard 0); every later start compares. A node that finds another
shard's database refuses to start before it serves, takes the lease or registers anything, so
it can never serve another shard's slots; `tally node` says why and exits non-zero.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from shards.local import supervisor
from shards.local.embedded_pg import EmbeddedPostgres, free_port
from shards.node.server import Node, NodeConfig, ShardIdentityError
from tests.support import helpers, security
from tests.support.helpers import start_node
from tests.support.paths import REPO_ROOT
from tests.support.processes import SERVING_LINE, fetch_rows

_numbers = itertools.count(1)


async def control_database(pg: EmbeddedPostgres, shard_count: int) -> str:
    """A fresh control database with an even slot map over shard_count shards."""
    name = f"t{os.getpid()}_identity_control_{next(_numbers)}"
    return await helpers.control_database(pg, name, shard_count)


async def recorded_shard(dsn: str) -> list[int]:
    rows = await fetch_rows(dsn, "SELECT shard_id FROM shard_identity")
    return [row["shard_id"] for row in rows]


async def registered(control_dsn: str) -> dict[int, str]:
    rows = await fetch_rows(control_dsn, "SELECT shard_id, endpoint FROM shards")
    return {row["shard_id"]: row["endpoint"] for row in rows}


def node_config(dsn: str, **fields: object) -> NodeConfig:
    return NodeConfig(
        dsn=dsn,
        listen="127.0.0.1:0",
        security=security.server_security(),
        durability="single-server",
        **fields,  # type: ignore[arg-type]
    )


async def test_a_node_records_its_shard_on_first_start(pg: EmbeddedPostgres, dsn: str) -> None:
    """A single node (no control database) records shard 0; a cluster's node its --shard-id;
    starting again on the same database keeps the record."""
    single = await start_node(dsn)
    await single.stop()
    assert await recorded_shard(dsn) == [0]
    again = await start_node(dsn)
    await again.stop()
    assert await recorded_shard(dsn) == [0]

    control_dsn = await control_database(pg, 2)
    name = f"t{os.getpid()}_identity_s1_{next(_numbers)}"
    await pg.create_database_async(name)
    member = await start_node(pg.dsn(name), control_dsn=control_dsn, shard_id=1)
    await member.stop()
    assert await recorded_shard(pg.dsn(name)) == [1]


async def test_a_node_refuses_the_database_of_another_shard(pg: EmbeddedPostgres, dsn: str) -> None:
    """Shard 1's database, then a node told it is shard 0 (of the cluster, or a single node
    without a control database): refused before it serves, with both shards named; it neither
    registers nor takes the lease, and the record stays shard 1's."""
    control_dsn = await control_database(pg, 2)
    owner = await start_node(dsn, control_dsn=control_dsn, shard_id=1)
    await owner.stop()
    endpoints = await registered(control_dsn)
    lease = await fetch_rows(dsn, "SELECT epoch FROM writer_lease")
    for config in (node_config(dsn, control_dsn=control_dsn, shard_id=0), node_config(dsn)):
        node = Node(config)
        with pytest.raises(ShardIdentityError) as refused:
            await node.start()
        message = str(refused.value)
        assert "belongs to shard 1" in message and "shard 0" in message, message
        assert node.port == 0 and node.writer is None
    assert await recorded_shard(dsn) == [1]
    assert await registered(control_dsn) == endpoints
    assert await fetch_rows(dsn, "SELECT epoch FROM writer_lease") == lease


def test_a_shard_id_without_a_control_database_is_refused() -> None:
    """Without a control database a node owns every slot: it is the single shard 0."""
    with pytest.raises(ValueError, match="needs a control database"):
        Node(node_config("postgresql://unused", shard_id=2))


async def test_tally_node_on_another_shards_database_exits_with_a_clear_message(
    pg: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    """`tally node --shard-id 1` on shard 0's database: no serving line, one line saying why
    on stderr, exit code 2, and nothing registered for shard 1."""
    control_dsn = await control_database(pg, 2)
    owner = await start_node(dsn, control_dsn=control_dsn, shard_id=0)
    await owner.stop()
    log_path = tmp_path / "wrong-shard.stderr.log"
    with pytest.raises(supervisor.NotServing) as failed:
        child = await supervisor.start(
            [
                *("node", "--shard-id", "1", "--listen", f"127.0.0.1:{free_port()}"),
                *security.server_flags(),
            ],
            log_path,
            name="wrong-shard",
            environment=supervisor.dsn_environment(dsn=dsn, control_dsn=control_dsn),
            append=False,
            cwd=REPO_ROOT,
            serving_prefixes=(SERVING_LINE,),
            serving_timeout_s=30.0,
        )
        await child.close()  # it served: the test fails on the raise below
    child = failed.value.child
    await child.close()
    stderr = log_path.read_text()
    assert child.returncode == 2, (child.returncode, stderr)
    assert "belongs to shard 0" in stderr and "--shard-id 1" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert not any(line.startswith(SERVING_LINE) for line in child.stdout_lines)
    assert 1 not in await registered(control_dsn)
    assert await recorded_shard(dsn) == [0]
