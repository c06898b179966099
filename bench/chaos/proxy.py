"""A TCP fault proxy on loopback: it sits in front of one node's internal listener (the node
advertises the proxy's address, so gateways and peer nodes reach it through the proxy) and
forwards bytes both ways, or, per source, refuses, blackholes or delays them.

A source is a process: on accepting a connection the proxy finds which of the campaign's
processes owns the connecting socket (its peer port in /proc/net/tcp, the socket's inode among
/proc/PID/fd), so one proxy can cut a node off from the gateways while its peers still reach it,
or the reverse. Linux only, no privilege needed (the processes are the campaign's own).

Modes (`Rule`): `pass`; `drop` (close the connection at once, and every open one of that source:
the caller sees the peer reset, as when a host goes away); `blackhole` (accept, read and discard,
never answer: the caller waits until its deadline, as behind a dead route); `delay` (forward
every chunk after delay_ms). Every connection and its buffers are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("tally.chaos.proxy")

CHUNK_BYTES_MAX = 65536
CONNECTION_COUNT_MAX = 512
CONNECT_TIMEOUT_S = 5.0
PASS, DROP, BLACKHOLE, DELAY = "pass", "drop", "blackhole", "delay"
MODES = (PASS, DROP, BLACKHOLE, DELAY)


@dataclass(frozen=True)
class Rule:
    mode: str = PASS
    delay_ms: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"proxy mode {self.mode!r}: one of {MODES}")


def _socket_inode(peer_port: int, listen_port: int) -> int | None:
    """The inode of the loopback socket on peer_port connected to listen_port (the caller's
    end), from /proc/net/tcp and tcp6."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as file:
            next(file, None)
            for line in file:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if (
                    int(local.rsplit(":", 1)[1], 16) == peer_port
                    and int(remote.rsplit(":", 1)[1], 16) == listen_port
                ):
                    return int(inode)
    return None


def owner_of(peer_port: int, listen_port: int, pids: dict[int, str]) -> str:
    """The name (of pids: pid -> name) of the process whose socket on peer_port is connected to
    listen_port, or "" when none of them owns it."""
    inode = _socket_inode(peer_port, listen_port)
    if inode is None:
        return ""
    target = f"socket:[{inode}]"
    for pid, name in pids.items():
        with contextlib.suppress(OSError):
            for entry in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(entry.path) == target:
                        return name
    return ""


class FaultProxy:
    """Listens on 127.0.0.1:listen_port and forwards to 127.0.0.1:target_port; rules per source
    (sources(): pid -> `gateway-0`, `node-2`, ...; a connection of no known process passes)."""

    def __init__(self, name: str, target_port: int, sources: Callable[[], dict[int, str]]) -> None:
        self.name = name
        self.target_port = target_port
        self._sources = sources
        self._rules: dict[str, Rule] = {}
        # Every connection forwarded now: its task, its source and its caller's end.
        self._open: dict[asyncio.Task[None], tuple[str, asyncio.StreamWriter]] = {}
        self._server: asyncio.Server | None = None
        self.listen_port = 0
        self.connection_count = 0

    async def start(self, listen_port: int = 0) -> int:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", listen_port, limit=CHUNK_BYTES_MAX
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self.listen_port

    def rule_of(self, source: str) -> Rule:
        """The rule for a source named `role-N`: its own, else its role's, else pass."""
        return self._rules.get(source) or self._rules.get(source.split("-")[0]) or Rule()

    def set_rule(self, selector: str, rule: Rule) -> None:
        """From now on, connections of selector (a source name, `node-2`, or a role, `node`)
        follow rule; a drop also closes the open ones it selects."""
        self._rules[selector] = rule
        if rule.mode == DROP:
            for source, writer in list(self._open.values()):
                if self.rule_of(source).mode == DROP:
                    # Closed under it: its pipes read the end and finish (a cancelled
                    # connection task would be logged by asyncio's stream callback).
                    writer.transport.abort()

    def clear(self) -> None:
        self._rules.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_port = writer.get_extra_info("peername")[1]
        source = await asyncio.to_thread(owner_of, peer_port, self.listen_port, self._sources())
        rule = self.rule_of(source)
        if rule.mode == DROP or len(self._open) >= CONNECTION_COUNT_MAX:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = (source, writer)
        self.connection_count += 1
        try:
            await self._forward(reader, writer, source)
        except (OSError, TimeoutError):
            pass  # the target is down or refused: the caller sees the connection end
        finally:
            self._open.pop(task, None)
            writer.transport.abort()

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.target_port, limit=CHUNK_BYTES_MAX),
            timeout=CONNECT_TIMEOUT_S,
        )
        pipes = [
            asyncio.create_task(self._pipe(reader, upstream_writer, source)),
            asyncio.create_task(self._pipe(upstream_reader, writer, source)),
        ]
        try:
            # Either direction ending (or failing) ends the connection.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            upstream_writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str
    ) -> None:
        """Copy until end of stream (or a drop), following the source's rule at each chunk."""
        while True:
            chunk = await reader.read(CHUNK_BYTES_MAX)
            if not chunk:
                return
            rule = self.rule_of(source)
            if rule.mode == BLACKHOLE:
                continue
            if rule.mode == DROP:
                return
            if rule.mode == DELAY:
                await asyncio.sleep(rule.delay_ms / 1000)
            writer.write(chunk)
            await writer.drain()
