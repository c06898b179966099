"""A shard node: grpc.aio servers for one shard database, each on its own TLS listener.

- The client listener (`listen`) serves tally.v1.Ledger, health checking and reflection to
  callers authenticated by their certificate or bearer token and authorised by their roles.
- The internal listener (`internal_listen`, in a cluster) serves tally.v1.Shard, and the Ledger
  for gateways, only to cluster identities (mutual TLS with the cluster CA, role `cluster`).
  The Shard service is never served or listed on the client listener.

Lifecycle: migrate, check that the database is this node's shard's (recording the shard on
first start), serve (health NOT_SERVING, reads only) while waiting for the writer lease, take
the lease, register as the shard's endpoint in the control database with the lease's epoch
(a cluster's node; refused if a newer epoch is registered), start the writer, health SERVING.
A lease free at start is taken before the first RPC is served, so a node that starts as the
writer is registered by the time it prints its serving line. On stop: refuse new RPCs, let
in-flight ones finish, drain the writer's queue (commit it), release the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core import limits
from core.dsn import redact
from core.model import ResultCode
from core.pieces import DeadlineMode, deadline_spec
from core.slots import SlotMap
from core.store import control as control_store
from core.store import shard as store
from core.store.history import ColdHistoryError, History, HotHistory
from shards import control, failpoints
from shards.crossshard.participant import settle_prepared
from shards.node import durability
from shards.node.heads import HeadPublisher, load_signer
from shards.node.lease import Lease, LeaseState
from shards.node.ledger_service import READ_TIMEOUT_S, LedgerService
from shards.node.metrics import NodeMetrics
from shards.node.shard_service import ShardService
from shards.node.stream import JournalStreams
from shards.node.writer import Writer, WriterConfig, WriterState
from shards.rpc.metrics import MetricsServer
from shards.rpc.servicer import ledger_handler, shard_handler
from shards.rpc.serving import grpc_server
from shards.security import guard
from shards.security.credentials import SecurityConfigError, ServerSecurity
from tally.v1 import ledger_pb2, shard_pb2

if TYPE_CHECKING:
    from core.store.cold.history import ColdHistory

log = logging.getLogger("tally.node")

LEDGER_SERVICE = ledger_pb2.DESCRIPTOR.services_by_name["Ledger"].full_name
SHARD_DESCRIPTOR = shard_pb2.DESCRIPTOR.services_by_name["Shard"]
SHARD_SERVICE = SHARD_DESCRIPTOR.full_name
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
IDENTITY_TIMEOUT_S = 30.0


class NodeRefusedError(RuntimeError):
    """The node's flags do not match its databases: it refuses to start (`tally node` says why
    and exits 2) before it serves a request, commits a block or registers its endpoint."""


class ShardIdentityError(NodeRefusedError):
    """The shard database records another shard than this node's."""


class NotDurableError(NodeRefusedError):
    """The database does not make commits as durable as --durability requires."""


class ColdDirectoryError(NodeRefusedError):
    """The shard's cold history is not where --cold-dir says (or the flag is missing)."""


class EpochBehindError(NodeRefusedError):
    """The control database records a newer writer epoch for this node's shard than the one
    this node holds on its database."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    dsn: str
    listen: str = "127.0.0.1:7400"
    writer: WriterConfig = field(default_factory=WriterConfig)
    expiry_interval_ms: int = 500
    expiry_batch_max: int = 1000
    read_pool_size_max: int = 4
    # How long a read (tally.v1.Ledger) waits for the storage before DEADLINE_EXCEEDED.
    read_timeout_s: float = READ_TIMEOUT_S
    shutdown_grace_s: float = 10.0
    lease_poll_interval_s: float = 0.5
    # Cluster: this node's shard and the control database with the slot map. Without a
    # control database the node owns every slot: the single shard 0.
    shard_id: int = 0
    control_dsn: str = ""
    # The address gateways use to reach this node (default: the bound listen address).
    advertise: str = ""
    # The address clients use to reach this node's client listener directly (tally.client's
    # direct routing; registered with `advertise`): default its bound listen address, none
    # when that is a wildcard (the node's certificate must cover the host clients dial).
    advertise_client: str = ""
    slot_map_poll_interval_s: float = 1.0
    # Prometheus /metrics on its own port ("": off; port 0: any free one, see Node.metrics_port).
    metrics_listen: str = ""
    # Counting held cross-shard pieces is a query: done this often, never per scrape.
    metrics_prepared_interval_s: float = 5.0
    # An Ed25519 private key (PEM) to sign journal heads with ("": blocks are unsigned), and a
    # directory to publish the signed heads to ("": not published); see shards/node/heads.py.
    signing_key: str = ""
    publish_heads: str = ""
    # Every listener is TLS: the node's certificate, the CA it trusts, how clients authenticate
    # (shards/security/credentials.py). Required: a node without it refuses to start.
    security: ServerSecurity | None = None
    # The internal listener (tally.v1.Shard, cluster identities only). "" with a control
    # database: the client listener's host, any free port (registered in the control database,
    # where gateways and peers find it); "" without one: no internal listener.
    internal_listen: str = ""
    # RPCs each listener (client, internal) serves at once; beyond, RESOURCE_EXHAUSTED.
    rpc_concurrency_max: int = limits.rpc_concurrency_max_default
    # What the database must make of a commit before the node writes on it
    # (shards/node/durability.py): a synchronous standby, unless told a single server will do.
    durability: str = durability.SYNC_STANDBY
    # The cluster's cold segments (tally segments archive --dir ROOT; this shard's are
    # ROOT/shard-N): reads and idempotency reach the history archived there. "": none, and a
    # node refuses a database that has cold history (docs/design.md, "Cold history").
    cold_dir: str = ""
    # The cluster's cold segments in an object store (s3://BUCKET/PREFIX?endpoint=...&region=R,
    # credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): then cold_dir is this node's
    # cache of the files fetched from it.
    cold_store: str = ""


class Node:
    def __init__(self, config: NodeConfig) -> None:
        if config.shard_id < 0:
            raise ValueError(f"--shard-id must not be negative (got {config.shard_id})")
        if config.shard_id != 0 and not config.control_dsn:
            raise ValueError(
                f"--shard-id {config.shard_id} needs a control database (--control-dsn): a node "
                "without one owns every slot, as the single shard 0"
            )
        self.config = config
        self._writer: Writer | None = None
        self._read_pool: Any = None
        self._server: grpc.aio.Server | None = None
        self._internal_server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        durability.refusal(config.durability, {})  # an unknown mode: ValueError now
        self._lease = Lease(self._connect_writer, f"{socket.gethostname()}:{os.getpid()}")
        self._stopping = asyncio.Event()
        self.port = 0
        self.internal_port = 0
        self.fenced = False
        self.slot_map: SlotMap | None = None
        self.owned_slots: frozenset[int] | None = None
        self._slot_map_checked_at = 0.0
        self._control = control.ControlClient(config.control_dsn)
        self.endpoints: dict[int, str] = {}
        self.metrics = NodeMetrics(config.shard_id, self)
        self._metrics_server: MetricsServer | None = None
        self.metrics_port = 0
        self.streams: JournalStreams | None = None
        # Where history reads look (the writer's idempotency lookups too): the database, and
        # the segments' directory when the shard has one.
        self._hot_history = HotHistory()
        # The shard's cold segments (None without --cold-dir): its stream and slot moves read
        # them too.
        self.cold_history: ColdHistory | None = None
        if config.cold_dir:
            from core.store.cold.history import ColdHistory  # pyarrow: only where it is read
            from core.store.cold.store import ObjectStore

            object_store = ObjectStore(config.cold_store) if config.cold_store else None
            self.cold_history = ColdHistory(Path(config.cold_dir), config.shard_id, object_store)
        elif config.cold_store:
            raise ValueError("--cold-store needs --cold-dir, the cache of the files it fetches")
        # Read at construction, so a bad key file stops the node before it serves anything.
        self.signer = load_signer(config.signing_key) if config.signing_key else None
        if config.publish_heads and self.signer is None:
            raise ValueError("--publish-heads needs --signing-key: only signed heads are published")
        if config.security is None:
            raise SecurityConfigError(
                "every listener is TLS: a node needs its certificate, key and CA (--tls-cert, "
                "--tls-key, --tls-ca)"
            )
        self.security = config.security
        if config.control_dsn and not config.advertise:
            host = (config.internal_listen or config.listen).rsplit(":", 1)[0].strip("[]")
            if host in WILDCARD_HOSTS:
                raise SecurityConfigError(
                    f"the internal listener binds {host!r}, which peers cannot reach nor check "
                    "against a certificate: give --advertise HOST:PORT, a name or address the "
                    "node's certificate covers"
                )
        denials = guard.denials_counter(self.metrics.registry)
        self._client_guard = guard.Guard(config.security, guard.CLIENT, denials)
        self._internal_guard = guard.Guard(config.security, guard.INTERNAL, denials)

    @property
    def writer(self) -> Writer | None:
        return self._writer

    @property
    def read_pool(self) -> Any:
        return self._read_pool

    @property
    def history(self) -> History:
        return self.cold_history if self.cold_history is not None else self._hot_history

    @property
    def shard_id(self) -> int:
        return self.config.shard_id

    @property
    def shard_ids(self) -> frozenset[int]:
        """The shards of this node's cluster: of its slot map and registered (itself alone
        without a control database)."""
        known = {self.config.shard_id, *self.endpoints}
        if self.slot_map is not None:
            known.update(self.slot_map.shard_ids)
        return frozenset(known)

    async def _connect(self) -> Any:
        # Acknowledged means durable: never inherit a database or role default of "off".
        return await asyncpg.connect(
            self.config.dsn,
            timeout=30.0,
            command_timeout=60.0,
            server_settings={"synchronous_commit": "on"},
        )

    async def _connect_writer(self) -> Any:
        """A connection to commit on, once its database is as durable as required (else
        NotDurableError, the connection closed)."""
        connection = await self._connect()
        try:
            await self._check_durability(connection)
        except BaseException:
            connection.terminate()
            raise
        return connection

    async def _check_durability(self, connection: Any) -> None:
        settings = await store.durability_settings(connection, IDENTITY_TIMEOUT_S)
        reason = durability.refusal(self.config.durability, settings)
        if reason is not None:
            raise NotDurableError(
                f"refusing to write on this database (--durability {self.config.durability}): "
                f"{reason}"
            )

    async def start(self) -> int:
        """Migrate, open the read pool and start serving; returns the bound port."""
        if self.signer is None:
            log.warning("no signing key (--signing-key): journal blocks are written unsigned")
        else:
            log.info("journal heads are signed with key %s", self.signer.key_id)
        connection = await self._connect()
        try:
            applied = await store.migrate(connection)
            if applied:
                log.info("applied migrations %s", applied)
            await self._check_identity(connection)
            await self._check_durability(connection)
            try:
                await self.history.check(connection, IDENTITY_TIMEOUT_S)
            except ColdHistoryError as error:
                raise ColdDirectoryError(str(error)) from error
        finally:
            await connection.close(timeout=5.0)
        if self.config.durability == durability.SINGLE_SERVER:
            log.warning(
                "--durability %s: acknowledged transactions are on one server's disk",
                durability.SINGLE_SERVER,
            )
        try:
            return await self._start_serving()
        except BaseException:
            await self._shutdown()
            raise

    async def _check_identity(self, connection: Any) -> None:
        """Refuse another shard's database (recording this shard's id on a first start)."""
        shard_id = self.config.shard_id
        recorded = await store.claim_shard(connection, shard_id, IDENTITY_TIMEOUT_S)
        if recorded == shard_id:
            return
        told = (
            f"--shard-id {shard_id}"
            if self.config.control_dsn
            else "a node without a control database is the single shard 0"
        )
        raise ShardIdentityError(
            f"the database {redact(self.config.dsn)} belongs to shard {recorded}, not to this "
            f"node's shard {shard_id} ({told}): give the node shard {shard_id}'s database, or "
            f"--shard-id {recorded}"
        )

    async def _start_serving(self) -> int:
        self._read_pool = await asyncpg.create_pool(
            self.config.dsn, min_size=1, max_size=self.config.read_pool_size_max, timeout=30.0
        )
        rpc_metrics = self.metrics.rpc
        streams = JournalStreams(
            self,
            self.config.read_timeout_s,
            self.metrics.streams,
            limits.stream_count_max,
            cold=self.cold_history,
        )
        self.streams = streams
        service = LedgerService(self, self.config.read_timeout_s, streams.serve)
        ledger = ledger_handler(service, rpc_metrics)
        self._server = self._grpc_server(self._client_guard)
        self._server.add_generic_rpc_handlers((ledger,))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (LEDGER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = self._listen(self._server, self.config.listen, self._client_guard)
        internal_listen = self.config.internal_listen
        if not internal_listen and self.config.control_dsn:
            internal_listen = f"{self.config.listen.rsplit(':', 1)[0]}:0"
        if internal_listen:
            internal = self._grpc_server(self._internal_guard)
            # Parsing its own requests, as the Ledger's: a body that does not parse is
            # INVALID_ARGUMENT, not gRPC's UNKNOWN.
            internal.add_generic_rpc_handlers(
                (shard_handler(ShardService(self), rpc_metrics), ledger)
            )
            health_pb2_grpc.add_HealthServicer_to_server(self._health, internal)
            reflection.enable_server_reflection(
                (SHARD_SERVICE, LEDGER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
                internal,
            )
            self.internal_port = self._listen(internal, internal_listen, self._internal_guard)
            self._internal_server = internal
        await self._set_serving(False)
        if self.config.control_dsn:
            await self._join_cluster()
        # A free lease is taken now, and a cluster's node registered with its epoch, before the
        # serving line: whoever waits for that line (tally up, then its gateway) finds it.
        if await self._lease.try_acquire() and self.config.control_dsn:
            await self._register(self._lease.epoch)
        if self.config.metrics_listen:
            self._metrics_server = MetricsServer(self.metrics.registry, self.config.metrics_listen)
            self.metrics_port = self._metrics_server.start()
        await self._server.start()
        if self._internal_server is not None:
            await self._internal_server.start()
        return self.port

    def _grpc_server(self, listener_guard: guard.Guard) -> grpc.aio.Server:
        return grpc_server(
            [listener_guard.interceptor()],
            [
                ("grpc.max_receive_message_length", limits.message_size_max_bytes),
                ("grpc.max_send_message_length", limits.message_size_max_bytes),
                ("grpc.so_reuseport", 0),
            ],
            self.config.rpc_concurrency_max,
        )

    @staticmethod
    def _listen(server: grpc.aio.Server, address: str, listener_guard: guard.Guard) -> int:
        port: int = server.add_secure_port(address, listener_guard.server_credentials())
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return port

    @property
    def internal_target(self) -> str:
        """Where gateways and peers reach this node (its internal listener)."""
        internal_listen = self.config.internal_listen or self.config.listen
        return f"{internal_listen.rsplit(':', 1)[0]}:{self.internal_port}"

    @property
    def client_target(self) -> str:
        """Where clients reach this node's client listener directly ("": not offered)."""
        if self.config.advertise_client:
            return self.config.advertise_client
        host = self.config.listen.rsplit(":", 1)[0]
        if host.strip("[]") in WILDCARD_HOSTS or not self.port:
            return ""
        return f"{host}:{self.port}"

    async def _join_cluster(self) -> None:
        """Read the slot map and the endpoints. This node's own endpoint is registered only
        once it holds the lease (_register): a standby never takes its shard's endpoint."""

        async def join(connection: Any) -> None:
            await control_store.prepare(connection)
            await self._refresh_slot_map(connection)

        # The connection stays open for the slot-map polls that follow.
        await self._control.use(join)
        if self.slot_map is None:
            raise RuntimeError("the control database has no slot map (run tally up / init)")

    async def _register(self, epoch: int) -> None:
        """Register as this shard's endpoint, as its writer of this lease epoch; a newer epoch
        registered (another writer of this shard, on another database or a newer copy of this
        one) refuses it: EpochBehindError."""
        shard_id = self.config.shard_id
        endpoint = self.config.advertise or self.internal_target
        client_endpoint = self.client_target

        async def register(connection: Any) -> int | None:
            return await control_store.register_shard(
                connection, shard_id, endpoint, epoch, client_endpoint
            )

        newer = await self._control.use(register)
        if newer is not None:
            raise EpochBehindError(
                f"the control database records epoch {newer} for shard {shard_id}, newer than "
                f"this writer's epoch {epoch} on {redact(self.config.dsn)}: shard {shard_id}'s "
                "writers use another database, or this one is an older copy; not serving it"
            )
        self.endpoints = {**self.endpoints, shard_id: endpoint}
        log.info(
            "registered as shard %d's endpoint %s, client endpoint %s (epoch %d)",
            shard_id,
            endpoint,
            client_endpoint or "none",
            epoch,
        )

    async def _register_after_takeover(self, epoch: int) -> bool:
        """_register, retried while the control database is unreachable: True once registered,
        False if the node was asked to stop first. EpochBehindError propagates."""
        while not self._stopping.is_set():
            try:
                await self._register(epoch)
                return True
            except (asyncio.CancelledError, EpochBehindError):
                raise
            except Exception as error:  # control database away: gateways cannot find us yet
                log.warning("registering as shard %d failed: %r", self.config.shard_id, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self.config.lease_poll_interval_s
                )
        return False

    async def _refresh_slot_map(self, connection: Any) -> None:
        self.endpoints = await control_store.shard_endpoints(connection)
        loaded = await control_store.load_slot_map(connection)
        if loaded is not None and (self.slot_map is None or loaded.version > self.slot_map.version):
            self.slot_map = loaded
            self.note_moved_out()
            owned = self.owned_slots or frozenset()
            log.info("slot map version %d: %d slots owned", loaded.version, len(owned))

    def note_moved_out(self) -> None:
        """The slots this node serves: the map's, but for those its writer moved out (refused
        from the move-out until the map moves them: docs/design.md, "Moving slots")."""
        if self.slot_map is None:
            return
        owned = self.slot_map.owned_by(self.config.shard_id)
        writer = self._writer
        if writer is not None and writer.moved_out:
            owned -= frozenset(writer.moved_out)
        self.owned_slots = owned

    async def refresh_slot_map_now(self) -> None:
        """Reload the slot map at most every 100 ms (asked when refusing WRONG_SHARD)."""
        now = time.monotonic()
        if not self.config.control_dsn or now - self._slot_map_checked_at < 0.1:
            return
        self._slot_map_checked_at = now
        await self._reload_slot_map()

    async def _reload_slot_map(self) -> None:
        try:
            await self._control.use(self._refresh_slot_map)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # control database unreachable: keep the map we have
            log.warning("slot map refresh failed: %r", error)

    async def _poll_slot_map(self) -> None:
        """Control plane: pick up slot moves (gateways learn of them through WRONG_SHARD)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self.config.slot_map_poll_interval_s
                )
            if self._stopping.is_set():
                return
            await self._reload_slot_map()

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set("", status)
        await self._health.set(LEDGER_SERVICE, status)

    async def run(self) -> None:
        """Take the lease (waiting as a standby), write until stopped or fenced, then shut down."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._write())
                group.create_task(self._stop_when_requested())
                if self.config.control_dsn:
                    group.create_task(self._poll_slot_map())
                if self._metrics_server is not None:
                    group.create_task(
                        self.metrics.sample_prepared(
                            self._read_pool, self._stopping, self.config.metrics_prepared_interval_s
                        )
                    )
        finally:
            await self._shutdown()

    async def _write(self) -> None:
        if self._lease.state is not LeaseState.HELD and not await self._take_over():
            return
        if self._stopping.is_set():  # asked to stop before writing anything
            return
        publisher = await self._start_publisher()
        try:
            await self._write_as(self._lease.epoch, publisher)
        finally:
            if publisher is not None:
                await asyncio.to_thread(publisher.close)

    async def _take_over(self) -> bool:
        """As a standby: wait for the lease, then register (a cluster's node). False: stopped
        first, or fenced by a newer registered epoch (the node then stops, exit code 3)."""
        acquire = asyncio.ensure_future(self._lease.acquire(self.config.lease_poll_interval_s))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({acquire, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (acquire, stopping):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if acquire not in done:
            return False
        epoch = acquire.result()
        if not self.config.control_dsn:
            return True
        try:
            return await self._register_after_takeover(epoch)
        except EpochBehindError as error:
            log.error("%s; stopping as fenced", error)
            self.fenced = True
            self._stopping.set()
            return False

    async def _start_publisher(self) -> HeadPublisher | None:
        if self.signer is None or not self.config.publish_heads:
            return None
        publisher = HeadPublisher(Path(self.config.publish_heads), self.config.shard_id)
        async with self._read_pool.acquire() as connection:
            head = await store.last_block(connection, 30.0)
            caught_up = await publisher.catch_up(connection, self.signer, head.sequence)
        if caught_up:
            log.info("published %d heads the last writer left unpublished", caught_up)
        publisher.start()
        log.info("publishing signed heads to %s", publisher.path)
        return publisher

    async def _write_as(self, epoch: int, publisher: HeadPublisher | None) -> None:
        writer = Writer(
            self.config.writer,
            self._connect_writer,
            epoch,
            self.metrics.batch_committed,
            self.signer,
            self.config.shard_id,
            publisher.publish if publisher is not None else None,
            self.history.load_transactions,
        )
        await writer.start()
        self._writer = writer
        self.note_moved_out()
        if self._stopping.is_set():
            # Asked to stop while the writer was starting (a SIGTERM right after the serving
            # line, the lease taken at start): _stop_when_requested found no writer to drain.
            writer.begin_drain()
        else:
            await self._set_serving(True)
        log.info("serving as writer on port %d (epoch %d)", self.port, writer.epoch)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._expire_holds(writer))
            if self.config.control_dsn:
                group.create_task(self._settle_prepared(writer))
            group.create_task(self._watch_lease(writer))
            await writer.run()
            self._stopping.set()
        if writer.state is WriterState.FENCED:
            self.fenced = True

    async def _expire_holds(self, writer: Writer) -> None:
        """Holds past their timeout are released without a client asking."""
        interval_s = self.config.expiry_interval_ms / 1000.0
        while writer.state is WriterState.RUNNING and not self._stopping.is_set():
            try:
                pending_ids = await store.expired_holds(
                    self._read_pool, failpoints.wall_ns(), self.config.expiry_batch_max, 10.0
                )
                if pending_ids:
                    results = await writer.submit(writer.expiry_items(pending_ids))
                    self.metrics.holds_expired(results)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # storage hiccup or writer draining: try next tick
                log.warning("expiry sweep failed: %r", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval_s)

    async def _watch_lease(self, writer: Writer) -> None:
        """If the lease session dies, take the lock back while the epoch is still ours;
        otherwise another writer has (or may have) taken over: stop writing."""
        while writer.state is WriterState.RUNNING and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=1.0)
            if self._stopping.is_set() or self._lease.is_alive():
                continue
            await self._set_serving(False)
            try:
                still_ours = await self._lease.reacquire()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # PostgreSQL unreachable: commits fail too; try again
                log.warning("writer lease session lost; reacquiring failed: %r", error)
                continue
            if not still_ours:
                log.error("writer lease taken over (epoch moved past %d); stopping", writer.epoch)
                writer.fence()
                self._stopping.set()
                return
            await self._set_serving(True)

    async def _settle_prepared(self, writer: Writer) -> None:
        """Cross-shard pieces held past their deadline: ask the coordinator for the decision
        (which records abort if it has none) and post or void the piece accordingly."""
        interval_s = self.config.expiry_interval_ms / 1000.0
        unarmed = True  # pieces without a deadline may be left from older code: arm them
        inherited = True  # pieces an earlier writer held: ask about them at once, not at P
        started_ns = failpoints.wall_ns()
        while writer.state is WriterState.RUNNING and not self._stopping.is_set():
            try:
                if unarmed:
                    unarmed = await self._arm_pieces_without_deadline(writer)
                if inherited:
                    await self._ask_inherited_pieces(writer, started_ns)
                    inherited = False
                overdue = await store.prepared_past_deadline(
                    self._read_pool, failpoints.wall_ns(), self.config.expiry_batch_max, 10.0
                )
                if overdue:
                    await settle_prepared(
                        writer, overdue, self.endpoints, self.security.as_client(), self._home_of
                    )
            except asyncio.CancelledError:
                raise
            except Exception as error:  # coordinator or storage away: next tick
                log.warning("settling prepared pieces failed: %r", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval_s)

    def _home_of(self, transaction_id: str) -> int:
        """The shard a transaction id is homed at under this node's slot map (-1: none yet):
        where a coordinator that moved the id's slot out sends its participants."""
        slot_map = self.slot_map
        return slot_map.home_of(transaction_id) if slot_map is not None else -1

    async def _ask_inherited_pieces(self, writer: Writer, started_ns: int) -> None:
        """Ask the coordinators at once about the pieces held since before this writer began.
        The writer before it went down (killed, failed over) with its calls in flight, so the
        gateways driving those pieces may never come back to them; waiting for their deadlines
        (the prepare deadline, 30 s) would keep their amounts held and their slots unmovable
        that long. Asking early is what a deadline does anyway: a coordinator with no decision
        records the attempt's abort (its gateway then answers `aborted`, retryable), one with
        a decision tells it; atomicity never rests on when a participant asks."""
        pieces = await store.prepared_before(
            self._read_pool, started_ns, self.config.expiry_batch_max, 10.0
        )
        if pieces:
            log.info("asking the coordinators of %d pieces an earlier writer held", len(pieces))
            await settle_prepared(
                writer, pieces, self.endpoints, self.security.as_client(), self._home_of
            )

    async def _arm_pieces_without_deadline(self, writer: Writer) -> bool:
        """Give the held pieces that have no deadline one of now, so the sweep asks their
        coordinators (ASKED: only while the piece still has none). Whether more may remain."""
        batch_max = self.config.expiry_batch_max
        pieces = await store.prepared_without_deadline(self._read_pool, batch_max, 10.0)
        if not pieces:
            return False
        log.warning("%d held cross-shard pieces had no deadline; asking about them", len(pieces))
        now_ns = failpoints.wall_ns()
        results = await writer.submit(
            [deadline_spec(p, now_ns, DeadlineMode.ASKED, 0) for p in pieces]
        )
        # A write that failed (retryable) leaves its pieces for the next tick.
        settled = (ResultCode.CREATED, ResultCode.REPLAYED, ResultCode.PENDING_ALREADY_RESOLVED)
        failed = any(r.code not in settled for r in results)
        return failed or len(pieces) == batch_max

    async def _stop_when_requested(self) -> None:
        await self._stopping.wait()
        await self._set_serving(False)
        if self.streams is not None:
            self.streams.stop()  # they would hold the servers' stop for its grace period
        if self._server is not None:
            # Refuse new RPCs; in-flight ones still reach the running writer and get answers.
            await asyncio.gather(
                *(
                    server.stop(self.config.shutdown_grace_s)
                    for server in (self._server, self._internal_server)
                    if server is not None
                )
            )
        if self._writer is not None:
            self._writer.begin_drain()

    def request_stop(self) -> None:
        self._stopping.set()

    async def _shutdown(self) -> None:
        for server in (self._server, self._internal_server):
            if server is not None:
                await server.stop(0)
        await self._lease.release()
        if self._read_pool is not None:
            await self._read_pool.close()
        self.history.close()
        await self._control.close()
        if self._metrics_server is not None:
            await self._metrics_server.stop()
