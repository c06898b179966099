"""The gateway: a stateless grpc.aio process serving the whole tally.v1.Ledger API of a cluster.

It validates each request (the same stateless rules as a node), splits it into units (items
or linked groups), routes each unit to the shard owning its accounts' slots, sends every
shard's share in one call (coalesced with other clients' requests), and merges the results in
the original order. A shard answering WRONG_SHARD means the gateway's slot map is old: it
reloads the map and sends those units again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core import limits
from shards.crossshard.coordinator import LATER_ABORT_INTERVAL_S
from shards.gateway.cluster import Cluster, GatewayConfig
from shards.gateway.ledger_service import GatewayService
from shards.gateway.links import CHANNEL_OPTIONS
from shards.gateway.stream import GatewayStreams
from shards.rpc.metrics import MetricsServer
from shards.rpc.servicer import ledger_handler
from shards.rpc.serving import grpc_server
from shards.security import guard
from shards.security.credentials import SecurityConfigError
from tally.v1 import ledger_pb2

log = logging.getLogger("tally.gateway")


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        if config.security is None:
            raise SecurityConfigError(
                "every listener is TLS: a gateway needs its certificate, key and CA (--tls-cert, "
                "--tls-key, --tls-ca); it calls the shards with the same certificate"
            )
        self.config = config
        self.cluster = Cluster(config)
        denials = guard.denials_counter(self.cluster.metrics.registry, "tally_gateway_")
        self._guard = guard.Guard(config.security, guard.CLIENT, denials)
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stopping = asyncio.Event()
        self.port = 0
        self._metrics_server: MetricsServer | None = None
        self.metrics_port = 0
        self.streams: GatewayStreams | None = None

    async def start(self) -> int:
        await self.cluster.refresh()
        self._server = grpc_server(
            [self._guard.interceptor()], CHANNEL_OPTIONS, self.config.rpc_concurrency_max
        )
        self.streams = GatewayStreams(self.cluster, limits.stream_count_max)
        service = GatewayService(self.cluster, self.streams)
        self._server.add_generic_rpc_handlers((ledger_handler(service, self.cluster.metrics.rpc),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        ledger_name = ledger_pb2.DESCRIPTOR.services_by_name["Ledger"].full_name
        reflection.enable_server_reflection(
            (ledger_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = self._server.add_secure_port(
            self.config.listen, self._guard.server_credentials()
        )
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        if self.config.metrics_listen:
            registry = self.cluster.metrics.registry
            self._metrics_server = MetricsServer(registry, self.config.metrics_listen)
            self.metrics_port = self._metrics_server.start()
        await self._server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await self._health.set("", serving)
        await self._health.set(ledger_name, serving)
        return self.port

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._poll())
                group.create_task(self._abort_later())
                await self._stopping.wait()
        finally:
            if self.streams is not None:
                self.streams.stop()  # they would hold the server's stop for its grace period
            if self._server is not None:
                await self._server.stop(self.config.shutdown_grace_s)
            await self.cluster.close()
            if self._metrics_server is not None:
                await self._metrics_server.stop()

    async def _abort_later(self) -> None:
        """Record the abort of attempts whose Commit never reached their coordinator, once it
        answers (LaterAborts), so their pieces are voided then rather than at their deadline."""
        later = self.cluster.later_aborts
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=LATER_ABORT_INTERVAL_S)
            if self._stopping.is_set() or not len(later):
                continue
            try:
                settled = await later.retry(self.cluster.driver())
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a shard away or draining: the next round asks again
                log.warning("aborting undelivered attempts failed: %r", error)
                continue
            if settled:
                log.info("aborted %d attempts whose commit had not reached its shard", settled)

    async def _poll(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self.config.slot_map_poll_interval_s
                )
            except TimeoutError:
                pass
            if self._stopping.is_set():
                return
            try:
                await self.cluster.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # control database away: keep the map we have
                self.cluster.metrics.slot_map_refresh_failed()
                log.warning("cluster refresh failed: %r", error)
