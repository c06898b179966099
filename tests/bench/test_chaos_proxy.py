"""The campaign's TCP fault proxy (bench/chaos/proxy.py) between real processes on loopback:
it tells its callers apart by process and refuses, swallows or passes each one's bytes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator

from bench.chaos.proxy import BLACKHOLE, DROP, FaultProxy, Rule

PROBE = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.settimeout(float(sys.argv[2]))
try:
    s.sendall(b"ping")
    print("answered" if s.recv(4) == b"ping" else "closed")
except TimeoutError:
    print("silent")
except OSError:
    print("closed")
"""


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def probe(proxy: FaultProxy, sources: dict[int, str], name: str, wait_s: float = 2) -> str:
    """A process named `name` connects through the proxy and says what came back."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, str(proxy.listen_port), str(wait_s),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    sources[child.pid] = name
    try:
        out, _ = await asyncio.wait_for(child.communicate(), timeout=30)
    finally:
        sources.pop(child.pid, None)
    return out.decode().strip()


async def test_the_proxy_cuts_one_source_and_passes_the_others() -> None:
    sources: dict[int, str] = {}
    async with echo_server() as port:
        proxy = FaultProxy("proxy-0", port, lambda: dict(sources))
        await proxy.start()
        try:
            assert await probe(proxy, sources, "gateway-0") == "answered"
            proxy.set_rule("gateway", Rule(DROP))
            assert await probe(proxy, sources, "gateway-1") == "closed"
            assert await probe(proxy, sources, "node-1") == "answered"
            proxy.set_rule("node-1", Rule(BLACKHOLE))  # one process, not its role
            assert await probe(proxy, sources, "node-1", wait_s=1) == "silent"
            assert await probe(proxy, sources, "node-2") == "answered"
            proxy.clear()
            assert await probe(proxy, sources, "gateway-0") == "answered"
            assert await probe(proxy, sources, "node-1") == "answered"
        finally:
            await proxy.close()


async def test_a_drop_closes_the_connections_already_open() -> None:
    sources: dict[int, str] = {}
    async with echo_server() as port:
        proxy = FaultProxy("proxy-0", port, lambda: dict(sources))
        await proxy.start()
        try:
            # This process is the source here (a connection of no known process passes).
            sources[os.getpid()] = "gateway-0"
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), timeout=5) == b"ping"
            proxy.set_rule("gateway", Rule(DROP))
            assert await asyncio.wait_for(reader.read(4), timeout=5) == b""  # closed under it
            writer.close()
        finally:
            await proxy.close()
