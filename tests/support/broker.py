"""A real NATS JetStream broker for tests (shards/local/embedded_nats.py), with a credentials
directory of its own: the broker's certificate, the relay's (publisher) and a reader's, all of
one CA; and reading back what a stream holds."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from shards.local.embedded_nats import RELAY_NAME, EmbeddedNats, EmbeddedNatsConfig
from shards.local.embedded_pg import free_port
from shards.security import directory
from tally.v1 import ledger_pb2 as pb

READER_NAME = "monitor"
MONITOR_NAME = "tally-monitor"  # the monitor's: it publishes the alert stream


@dataclass
class Broker:
    server: EmbeddedNats
    credentials: Path

    def tls(self, name: str = RELAY_NAME) -> ssl.SSLContext:
        return tls_of(self.credentials, name)

    async def connect(self, name: str = RELAY_NAME) -> NatsClient:
        return await asyncio.wait_for(
            nats.connect(
                self.server.url, tls=self.tls(name), connect_timeout=5,
                max_reconnect_attempts=0, allow_reconnect=False,
            ),
            timeout=15,
        )  # fmt: skip

    async def blocks(self, stream: str) -> list[pb.JournalBlock]:
        """Every message the stream holds, in stream order, as journal blocks."""
        return await stored_blocks(self.server.url, self.tls(), stream)


def tls_of(credentials: Path, name: str = RELAY_NAME) -> ssl.SSLContext:
    """The TLS context of certificate name of a credentials directory, for its broker."""
    context = ssl.create_default_context(cafile=str(credentials / "ca.pem"))
    context.load_cert_chain(credentials / f"{name}.pem", credentials / f"{name}.key")
    return context


async def stored_blocks(url: str, tls: ssl.SSLContext, stream: str) -> list[pb.JournalBlock]:
    """Every message stream holds at the broker at url, in stream order, as journal blocks
    (each message's Tally-Sequence header checked against its block)."""
    client = await asyncio.wait_for(
        nats.connect(
            url, tls=tls, connect_timeout=5, max_reconnect_attempts=0, allow_reconnect=False
        ),
        timeout=15,
    )
    try:
        js = client.jetstream()
        info = await js.stream_info(stream)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(stream, seq)
            block = pb.JournalBlock()
            assert message.data is not None
            block.ParseFromString(message.data)
            assert message.headers is not None
            assert message.headers["Tally-Sequence"] == str(block.sequence)
            found.append(block)
        return found
    finally:
        await client.close()


def make_credentials(root: Path) -> Path:
    """A CA and the broker's, the relay's, a reader's and the monitor's certificates (names,
    no roles)."""
    directory.init(root)
    directory.issue_certificate(root, "tally-nats", (), (), ("127.0.0.1",))
    directory.issue_certificate(root, RELAY_NAME, (), ())
    directory.issue_certificate(root, READER_NAME, (), ())
    directory.issue_certificate(root, MONITOR_NAME, (), ())
    return root


@contextlib.asynccontextmanager
async def running_broker(root: Path) -> AsyncIterator[Broker]:
    credentials = make_credentials(root / "broker-tls")
    server = EmbeddedNats(
        EmbeddedNatsConfig(
            data_dir=root / "nats",
            port=free_port(),
            ca_file=credentials / "ca.pem",
            certificate_file=credentials / "tally-nats.pem",
            key_file=credentials / "tally-nats.key",
            publishers=(RELAY_NAME, MONITOR_NAME),
            readers=(READER_NAME,),
        )
    )
    await server.start()
    try:
        yield Broker(server, credentials)
    finally:
        await server.stop()
