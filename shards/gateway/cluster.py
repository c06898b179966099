"""The gateway's view of the cluster: its configuration, the slot map, links to the shards,
where transactions live, and the cross-shard holds it committed."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

from core import limits
from core.history import SlotHolders
from core.model import Result, ResultCode
from core.slots import SlotMap, account_slot, is_spread
from shards import control
from shards.crossshard.coordinator import Driver, LaterAborts
from shards.gateway.links import ShardLink
from shards.gateway.metrics import GatewayMetrics
from shards.rpc.servicer import Unavailable
from shards.security.credentials import ServerSecurity
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2
from tally.v1.shard_pb2_grpc import ShardStub

log = logging.getLogger("tally.gateway")

SHARD_DESCRIPTOR = shard_pb2.DESCRIPTOR.services_by_name["Shard"]


class KnownHold(NamedTuple):
    """What never changes of a committed cross-shard hold: its coordinator shard, its
    participants, and its record as the client reads it (its legs over all shards, attempt,
    expiry; its status, which changes, is not known: PENDING)."""

    coordinator: int
    participants: tuple[int, ...]
    record: pb.TransactionRecord


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    control_dsn: str
    listen: str = "127.0.0.1:7400"
    shard_call_timeout_s: float = 30.0
    # A slot being moved is refused (WRONG_SHARD) from its move-out until the map moves: about
    # 4.5 s of rounds (below) covers the pause, so clients never see it (docs/design.md,
    # "Moving slots").
    wrong_shard_retry_max: int = 12
    slot_map_poll_interval_s: float = 1.0
    location_cache_count_max: int = 100_000
    shutdown_grace_s: float = 10.0
    # Prometheus /metrics on its own port ("": off; port 0: any free one, see Gateway.metrics_port).
    metrics_listen: str = ""
    # Coalescing of small writes per shard: calls in flight at once, and how long a request
    # that could leave at once may wait for as many requests as the last call carried to join
    # it (0: it leaves at once; shards/gateway/links.py). One call in flight: requests arriving
    # meanwhile gather behind it into the next call, so a busy shard gets fewer, larger commits
    # (bench.cluster, one transfer per call: +33% transfers/s and less CPU per transfer in
    # every role than with two), and a lone request still leaves at once. The wait: with 64
    # callers the calls carried 6 requests without it, and the nodes' and PostgreSQL's CPU per
    # transfer fell by about a third with it (bench/baselines/2026-12-08-coalesce-company-*).
    shard_calls_in_flight_max: int = 1
    coalesce_wait_ms: float = 20.0
    # RPCs the client listener serves at once; beyond, RESOURCE_EXHAUSTED.
    rpc_concurrency_max: int = limits.rpc_concurrency_max_default
    # Every listener is TLS, and links to the shards are mutual TLS with this certificate
    # (a cluster identity): required, a gateway without it refuses to start.
    security: ServerSecurity | None = None


class Cluster:
    """The gateway's view of the cluster: slot map, links to shards, where transactions live."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.slot_map: SlotMap | None = None
        self.links: dict[int, ShardLink] = {}
        # The nodes' client listeners, for GetRouting (clients that route directly).
        self.client_endpoints: dict[int, str] = {}
        self._locations: OrderedDict[str, int] = OrderedDict()
        self._cross_shard: set[str] = set()  # those of _locations that are cross-shard
        # Cross-shard holds this gateway committed: what never changes of them, so that their
        # post or void needs no read (a hold and its capture usually pass the same gateway).
        self._holds: OrderedDict[str, KnownHold] = OrderedDict()
        self._hold_versions: dict[str, int] = {}
        self._refresh_lock = asyncio.Lock()
        # Which shards held each moved slot, from the control database's done moves, read with
        # the map (only when its version changed: each done move changes it).
        self._holders = SlotHolders()
        self._moves_version = -1
        self._control = control.ControlClient(config.control_dsn)
        self._clearing_ready: set[str] = set()
        self._clearing_lock = asyncio.Lock()
        # Built after slot_map and links, which its collector reads at scrape time.
        self.metrics = GatewayMetrics(self)
        # Each link's two-phase-commit stub, timed as calls to its shard.
        self._shard_stubs: dict[int, Any] = {}
        # Attempts whose Commit never reached their coordinator: aborted once it answers.
        self.later_aborts = LaterAborts()

    async def refresh(self) -> None:
        async with self._refresh_lock:
            (
                slot_map,
                endpoints,
                client_endpoints,
                moves,
            ) = await self._control.read_cluster_and_moves(self._moves_version)
            if slot_map is None:
                raise RuntimeError("the control database has no slot map yet")
            await self._update_links(endpoints)
            self.client_endpoints = client_endpoints
            self._holders.add(moves)
            self._moves_version = slot_map.version
            if self.slot_map is None or slot_map.version > self.slot_map.version:
                log.info("slot map version %d", slot_map.version)
                self.slot_map = slot_map

    async def _update_links(self, endpoints: dict[int, str]) -> None:
        for shard_id, endpoint in endpoints.items():
            link = self.links.get(shard_id)
            if link is not None and link.endpoint == endpoint:
                continue
            self.links[shard_id] = ShardLink(
                shard_id,
                endpoint,
                self.config.shard_call_timeout_s,
                self.config.shard_calls_in_flight_max,
                metrics=self.metrics,
                coalesce_wait_s=self.config.coalesce_wait_ms / 1000.0,
                security=self.config.security.as_client() if self.config.security else None,
            )
            self._shard_stubs[shard_id] = self.metrics.metered_stub(
                ShardStub(self.links[shard_id].channel), SHARD_DESCRIPTOR, shard_id
            )
            if link is not None:
                await link.close()

    async def backoff_and_refresh(self, attempt: int) -> None:
        """After WRONG_SHARD: the map moved, or a slot is moving (refused by its old owner until
        the map moves); the shards may be a moment behind the control database, so wait a
        little longer each round (50, 100, 200, 400 ms, then 500 ms) and reload."""
        self.metrics.wrong_shard_retry()
        await asyncio.sleep(min(0.05 * 2 ** (attempt - 1), 0.5))
        await self.refresh()

    def driver(self) -> Driver:
        return Driver(
            dict(self._shard_stubs),
            self.metrics.cross_shard_phase,
            self.metrics.hold_decision_refused,
            self.later_aborts,
        )

    async def ensure_clearing_accounts(self, currencies: set[str]) -> None:
        """Each currency's inter-shard clearing account, a spread account (once per process)."""
        if not currencies - self._clearing_ready:
            return
        async with self._clearing_lock:  # one creation at a time; the others find it done
            await self._create_clearing_accounts(sorted(currencies - self._clearing_ready))

    async def _create_clearing_accounts(self, missing: list[str]) -> None:
        if not missing:
            return
        request = shard_pb2.CreateClearingAccountsRequest(currencies=missing)
        for shard_id in self.map().shard_ids:
            stub = self._shard_stubs.get(shard_id)
            if stub is None:
                raise Unavailable(
                    f"shard {shard_id} has no registered endpoint (no writer yet); retry"
                )
            response = await stub.CreateClearingAccounts(
                request, timeout=self.config.shard_call_timeout_s
            )
            for currency, result in zip(missing, response.results, strict=True):
                if result.code not in (pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED):
                    raise RuntimeError(
                        f"cannot create the clearing account of {currency} on shard {shard_id}: "
                        f"{result}"
                    )
        self._clearing_ready.update(missing)

    def map(self) -> SlotMap:
        if self.slot_map is None:
            raise RuntimeError("no slot map")
        return self.slot_map

    def holders(self, account_id: str) -> tuple[int, ...]:
        """The shards that held a (non-spread) account's slot, oldest first, ending with its
        owner: where its history is (docs/design.md, "Reads across the move")."""
        owner = self.map().shard_of_account(account_id)
        return self._holders.holders(account_slot(account_id), owner)

    def knows_move(self, move_id: str) -> bool:
        """Whether this gateway has read the move as done."""
        return self._holders.knows(move_id)

    def link(self, shard_id: int) -> ShardLink:
        link = self.links.get(shard_id)
        if link is None:
            raise Unavailable(f"shard {shard_id} has no registered endpoint (no writer yet); retry")
        return link

    def remember(self, transaction_id: str, shard_id: int, cross_shard: bool = False) -> None:
        """That a transaction exists, at its shard (its home: for a committed cross-shard one,
        its coordinator), and whether it is cross-shard. locate() places it by the map as it
        is then, since a slot move takes it to another shard."""
        self._locations[transaction_id] = shard_id
        self._locations.move_to_end(transaction_id)
        if cross_shard:
            self._cross_shard.add(transaction_id)
        while len(self._locations) > self.config.location_cache_count_max:
            evicted, _ = self._locations.popitem(last=False)
            self._cross_shard.discard(evicted)

    def remember_hold(self, hold_id: str, hold: KnownHold) -> None:
        """A cross-shard hold this gateway committed (known under the map as it is now)."""
        self._holds[hold_id] = hold
        self._hold_versions[hold_id] = self.map().version
        self._holds.move_to_end(hold_id)
        while len(self._holds) > self.config.location_cache_count_max:
            forgotten, _ = self._holds.popitem(last=False)
            self._hold_versions.pop(forgotten, None)

    def known_hold(self, hold_id: str) -> KnownHold | None:
        """A hold remembered under the map as it is now (a held piece moves with its accounts'
        slots, so after any move its participants are read again)."""
        if self._hold_versions.get(hold_id) != self.map().version:
            return None
        return self._holds.get(hold_id)

    def forget_hold(self, hold_id: str) -> None:
        self._holds.pop(hold_id, None)
        self._hold_versions.pop(hold_id, None)

    def is_cross_shard(self, transaction_id: str) -> bool:
        """Located (by locate()) as a committed cross-shard transaction."""
        return transaction_id in self._cross_shard

    async def locate(self, transaction_ids: Sequence[str]) -> dict[str, int]:
        """Shards recording these transactions, of those that exist: each id's home
        (core.slots), asked there alone (cached: whether it is a cross-shard one)."""
        # A record lives at its id's home; a slot move takes it to another shard, so the
        # cached answer (it exists, cross-shard or not) is placed by the map as it is now.
        slot_map = self.map()
        found = {t: slot_map.home_of(t) for t in transaction_ids if t in self._locations}
        missing = [t for t in dict.fromkeys(transaction_ids) if t not in found]
        if not missing:
            return found
        lookups = await self.lookup_at_home(missing)
        for transaction_id, (shard_id, lookup) in zip(missing, lookups, strict=True):
            if lookup.code == pb.RESULT_CODE_OK:
                found[transaction_id] = shard_id
                coordinator = lookup.transaction.cross_shard_piece.coordinator
                self.remember(transaction_id, shard_id, cross_shard=coordinator)
            elif _moved(lookup):
                # Its slot moved out of there (this map is old): placed there all the same (not
                # remembered), so the write is refused WRONG_SHARD and routed again under a
                # reloaded map, never taken for not found.
                found[transaction_id] = shard_id
        return found

    async def lookup_at_home(self, transaction_ids: Sequence[str]) -> list[tuple[int, Any]]:
        """Each id's (home shard, pb.TransactionLookup there): one call per home shard."""
        slot_map = self.map()
        asked: dict[int, list[str]] = {}
        for transaction_id in transaction_ids:
            asked.setdefault(slot_map.home_of(transaction_id), []).append(transaction_id)
        found = await self.lookup_on(asked)
        taken = {shard_id: iter(lookups) for shard_id, lookups in found.items()}
        answers = []
        for transaction_id in transaction_ids:
            home = slot_map.home_of(transaction_id)
            answers.append((home, next(taken[home])))
        return answers

    async def lookup_following_moves(
        self, transaction_ids: Sequence[str], *, raise_moving: bool = False
    ) -> list[tuple[int, Any]]:
        """As lookup_at_home, for reads of a record's state: an id whose home answers
        WRONG_SHARD (it moved the id's slot out, and its copy there is stale) is asked again at
        its home under a reloaded map, with the writes' backoff. Still so after every round
        (the slot in a move's pause), it is UNAVAILABLE, retryable; with raise_moving, that is
        raised (Unavailable), for a write that must not take it for not found."""
        answers = await self.lookup_at_home(transaction_ids)
        for attempt in range(1, self.config.wrong_shard_retry_max + 1):
            moving = [n for n, (_, lookup) in enumerate(answers) if _moved(lookup)]
            if not moving:
                return answers
            await self.backoff_and_refresh(attempt)
            again = await self.lookup_at_home([transaction_ids[n] for n in moving])
            for n, answer in zip(moving, again, strict=True):
                answers[n] = answer
        for n, (shard_id, lookup) in enumerate(answers):
            if _moved(lookup):
                message = f"transaction {transaction_ids[n]!r} is in a slot being moved; retry"
                if raise_moving:
                    raise Unavailable(message)
                moving_lookup = pb.TransactionLookup(
                    code=pb.RESULT_CODE_UNAVAILABLE, message=message
                )
                answers[n] = (shard_id, moving_lookup)
        return answers

    async def lookup_on(self, asked: dict[int, list[str]]) -> dict[int, list[Any]]:
        """Per shard, the pb.TransactionLookup of each id asked of it, in order: one call per
        shard, all in parallel."""

        async def ask(shard_id: int, ids: list[str]) -> list[Any]:
            link = self.link(shard_id)
            request = pb.GetTransactionsRequest(ids=ids)
            try:
                response = await link.stub.GetTransactions(request, timeout=link.call_timeout_s)
            except grpc.aio.AioRpcError as error:  # the same status, naming the shard
                raise grpc.aio.AioRpcError(
                    error.code(),
                    error.initial_metadata(),
                    error.trailing_metadata(),
                    f"shard {shard_id}: {error.details()}",
                    error.debug_error_string(),
                ) from error
            return list(response.results)

        shard_ids = list(asked)
        answers = await asyncio.gather(*(ask(s, asked[s]) for s in shard_ids))
        return dict(zip(shard_ids, answers, strict=True))

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()
        await self._control.close()


def merge_piece_results(results: Sequence[Any]) -> Result:
    """One result for an item applied on every shard (a spread account): the first failure,
    else CREATED if any piece was created now, else REPLAYED."""
    codes = [ResultCode(r.code) for r in results]
    for result, code in zip(results, codes, strict=True):
        if code not in (ResultCode.CREATED, ResultCode.REPLAYED):
            return Result(code, result.message)
    timestamp_ns = max(r.timestamp_ns for r in results)
    if ResultCode.CREATED in codes:
        return Result(ResultCode.CREATED, "", timestamp_ns)
    return Result(ResultCode.REPLAYED, "", timestamp_ns)


def spread_or_owner(account_id: str, slot_map: SlotMap) -> list[int]:
    if is_spread(account_id):
        return list(slot_map.shard_ids)
    return [slot_map.shard_of_account(account_id)]


def _moved(lookup: Any) -> bool:
    return bool(lookup.code == pb.RESULT_CODE_WRONG_SHARD)
