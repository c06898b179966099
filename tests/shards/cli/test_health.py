"""`tally health`, the containers' probe (deploy/): a writer is SERVING, a standby waiting for
its shard's lease answers NOT_SERVING (not ready, but alive: --answering), and a listener that
refuses the caller's credential or is not there fails the probe."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from shards.cli.main import main
from shards.node.server import Node, NodeConfig
from shards.node.writer import WriterConfig
from tests.support import security
from tests.support.helpers import NodeHandle


def health(*arguments: str) -> int:
    return main(["health", *arguments, *security.client_flags(), "--timeout-s", "10"])


async def test_a_writer_is_serving(node: NodeHandle, capsys: pytest.CaptureFixture[str]) -> None:
    assert await asyncio.to_thread(health, node.target) == 0
    assert f"tally: {node.target} (server): SERVING" in capsys.readouterr().out
    assert await asyncio.to_thread(health, node.target, "--service", "tally.v1.Ledger") == 0


async def test_a_standby_is_alive_but_not_ready(node: NodeHandle) -> None:
    standby = Node(
        NodeConfig(
            dsn=node.dsn,
            listen="127.0.0.1:0",
            writer=WriterConfig(),
            security=security.server_security(),
            durability="single-server",
        )
    )
    port = await standby.start()
    running = asyncio.create_task(standby.run())
    try:
        target = f"127.0.0.1:{port}"
        assert standby.writer is None  # the writer holds the lease
        assert await asyncio.to_thread(health, target) == 1
        assert await asyncio.to_thread(health, target, "--answering") == 0
    finally:
        standby.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=30)


async def test_unknown_service_and_absent_listener_fail(node: NodeHandle) -> None:
    assert await asyncio.to_thread(health, node.target, "--service", "no.such.Service") == 1
    node_port = node.target.rsplit(":", 1)[1]
    await node.stop()
    assert await asyncio.to_thread(health, f"127.0.0.1:{node_port}", "--answering") == 1


async def test_a_caller_without_a_certificate_fails(
    node: NodeHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A token and no certificate: the listener wants a client certificate (--client-auth
    # certificate) and the handshake refuses before any RPC.
    ca = next(flag for flag in security.client_flags() if flag.startswith("--ca="))
    token = tmp_path / "token"
    token.write_text("not-a-token\n")
    code = await asyncio.to_thread(main, ["health", node.target, ca, "--token", str(token)])
    assert code == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
