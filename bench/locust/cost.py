"""The cost model: accounts one ledger node can carry, and the cost per account per year.

Inputs, each stated in the report:
- the instance: a named general-purpose 2 vCPU cloud instance, its on-demand price per hour,
  where that price comes from and its date (override with --price-per-hour and friends);
- block storage (the PostgreSQL volume) price per GiB-month and the largest volume; object
  storage (cold history) price per GiB-month (--storage-price-gb-month,
  --object-storage-price-gb-month);
- measured: CPU seconds per transaction of each server role (shard nodes, gateway,
  PostgreSQL; the load generator is not the ledger and is left out), postings per transaction,
  bytes on disk per account and per posting (PostgreSQL's own relation sizes, indexes and TOAST
  included, divided by row counts), and the bytes per posting of a cold segment when one was
  measured (--cold-bytes-per-posting; until then cold history is priced at the hot bytes per
  posting, so the figure never flatters);
- the activity profile: postings per account per month, the peak-to-average ratio of the
  busiest hour, the share of the cores a node may use at peak, months of postings kept online;
- the deployment: how many days of that history stay hot in PostgreSQL (--hot-days, default a
  quarter of a year, 365.25 / 4 = 91.3125 days = 3 months), the rest kept cold in object
  storage; and the synchronous standbys per shard (--standby-copies, default 1: what
  `tally up --replicas 1` runs and the node's default `--durability sync-standby` demands).

A "node" is one instance running one shard: its node process, its PostgreSQL and its share of
the stateless gateway, i.e. every server role measured. A standby is one more instance of the
same kind with its own volume holding a copy of the hot bytes. Cold segments in object storage
are counted once: the provider keeps its own copies (S3 Standard stores an object across at
least three availability zones) and a standby does not add one.

    cpu_s_per_tx             = sum of the roles' CPU seconds per transaction
    node_tx_per_s            = vcpus * cpu_utilisation_max / cpu_s_per_tx
    tx_per_account_month     = postings_per_account_month / customer_postings_per_tx
    peak_tx_per_account_s    = tx_per_account_month / seconds_per_month * peak_to_average
    accounts_by_cpu          = node_tx_per_s / peak_tx_per_account_s
    postings_stored_month    = tx_per_account_month * postings_per_tx
    hot_months               = hot_days / (365.25 / 12)       (at most retention_months)
    hot_bytes_per_account    = bytes_per_account
                               + postings_stored_month * hot_months * bytes_per_posting
    cold_bytes_per_account   = postings_stored_month * (retention_months - hot_months)
                               * cold_bytes_per_posting    (bytes_per_posting until measured)

An account's postings are its own (60 a month: 30 transfers in or out, each posting to two
customer accounts); a transaction stores postings_per_tx postings in all (measured: a
cross-shard transfer adds the clearing account's legs on each shard).
    accounts_by_storage      = volume_max_bytes / hot_bytes_per_account   (cold: no volume)
    accounts_per_node        = min(accounts_by_cpu, accounts_by_storage)
    copies                   = 1 + standby_copies
    compute_per_account_year = price_per_hour * hours_per_year / accounts_per_node * copies
    hot_per_account_year     = hot_bytes_per_account / GiB * block_price_gib_month * 12 * copies
    cold_per_account_year    = cold_bytes_per_account / GiB * object_price_gib_month * 12
    cost_per_account_year    = compute + hot + cold

The estimate carries both splits: one copy (copies = 1) and with the standbys (the headline:
the node refuses a database without a synchronous standby unless told otherwise, so a
deployment as shipped pays for it). With hot_days equal to the retention and no standby the
model is the one before the hot/cold split: everything in PostgreSQL on one volume.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

DAYS_PER_YEAR: Final = 365.25
# Issue 13's starting point and targets, indexes included, for the report's table of bytes
# before and now: the shard database's storage breakdown when the issue was measured.
BYTES_BEFORE: Final = {"posting": 396.5, "account": 394.4, "transaction": 793.1}
BYTES_BEFORE_SOURCE: Final = "bench/baselines/2026-12-03-storage-breakdown-5a9bd67/"
BYTES_TARGET: Final = {"posting": 120.0, "account": 150.0}
DAYS_PER_MONTH: Final = DAYS_PER_YEAR / 12
HOURS_PER_YEAR: Final = DAYS_PER_YEAR * 24
SECONDS_PER_MONTH: Final = DAYS_PER_YEAR * 86_400 / 12
GIB: Final = 2**30
TIB: Final = 2**40
HEADLINE_WHY: Final = (
    "the node refuses a database without a synchronous standby by default "
    "(--durability sync-standby), so the deployment as shipped pays for it"
)


@dataclass(frozen=True, slots=True)
class Prices:
    instance_name: str = "AWS EC2 m7g.large (2 vCPU Graviton3, 8 GiB), us-east-1, on-demand, Linux"
    price_per_hour_usd: float = 0.0816
    vcpu_count: int = 2
    price_source: str = (
        "factualminds.com, 'Amazon EC2 On-Demand Pricing: Instance Families, Regional "
        "Multipliers, and the Graviton Crossover (2026)', quoting AWS's us-east-1 rate card; a "
        "third-party copy read from a stored page, not AWS's own price list: check it and "
        "override with --price-per-hour"
    )
    price_date: str = "2026-06-17"
    storage_name: str = "AWS EBS gp3 (3,000 IOPS and 125 MB/s included), us-east-1"
    storage_price_per_gib_month_usd: float = 0.08
    storage_source: str = (
        "saisci.com, 'gp2 vs gp3 Cost Comparison – EBS Volumes' (last updated 2021-02-04), "
        "quoting AWS's EBS pricing page; override with --storage-price-gb-month"
    )
    volume_max_bytes: int = 16 * TIB  # gp3's largest volume
    object_storage_name: str = "AWS S3 Standard, us-east-1, first 50 TB per month"
    object_storage_price_per_gib_month_usd: float = 0.023
    object_storage_source: str = (
        "cloudburn.io, 'Amazon S3 Pricing Explained: All Costs + Calculator' (2026-03-13; "
        "its prices for US East (N. Virginia) as of March 2026), quoting AWS's S3 pricing "
        "page; a third-party copy read from a stored page: check it and override with "
        "--object-storage-price-gb-month"
    )


@dataclass(frozen=True, slots=True)
class Activity:
    postings_per_account_month: float = 60.0  # about two a day on each customer account
    customer_postings_per_tx: float = 2.0  # a transfer posts to two customer accounts
    peak_to_average: float = 5.0  # the busiest hour (payday, month end) against the average
    cpu_utilisation_max: float = 0.7  # headroom kept at that peak
    retention_months: float = 24.0  # postings kept online (hot and cold); older ones archived


@dataclass(frozen=True, slots=True)
class Deployment:
    hot_days: float = DAYS_PER_YEAR / 4  # a quarter: 91.3125 days = 3 months hot in PostgreSQL
    standby_copies: int = 1  # synchronous standbys per shard (tally up --replicas 1)


@dataclass(frozen=True, slots=True)
class Measured:
    scenario: str
    cpu_s_per_tx_by_role: dict[str, float]
    postings_per_tx: float
    bytes_per_account: float
    bytes_per_posting: float
    notes: list[str] = field(default_factory=list)
    cold_bytes_per_posting: float | None = None  # a cold segment's, when one was measured


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the command line gives the model (everything but what the run measures)."""

    prices: Prices = field(default_factory=Prices)
    activity: Activity = field(default_factory=Activity)
    deployment: Deployment = field(default_factory=Deployment)
    cold_bytes_per_posting: float | None = None  # measured elsewhere, given by flag


@dataclass(frozen=True, slots=True)
class Split:
    """Cost per account-year of one way of deploying: `copies` machines and hot volumes per
    shard, the cold segments once."""

    copies: int
    compute_usd: float
    hot_storage_usd: float
    cold_storage_usd: float
    total_usd: float


@dataclass(frozen=True, slots=True)
class Estimate:
    prices: Prices
    activity: Activity
    deployment: Deployment
    measured: Measured
    cpu_s_per_tx: float
    node_tx_per_s: float
    tx_per_account_month: float
    peak_tx_per_account_s: float
    accounts_by_cpu: float
    postings_stored_per_account_month: float
    hot_months: float
    cold_months: float
    cold_bytes_per_posting: float  # the one priced: measured, or the hot bytes per posting
    cold_bytes_measured: bool
    hot_bytes_per_account: float
    cold_bytes_per_account: float
    bytes_per_account_stored: float  # hot + cold, one copy
    accounts_by_storage: float
    accounts_per_node: float
    limited_by: str
    one_copy: Split
    with_standby: Split
    headline: str  # "with_standby" (the durable deployment) or "one_copy" (no standby asked)
    # The headline split's figures (with the standby, unless --standby-copies 0):
    compute_per_account_year_usd: float
    hot_storage_per_account_year_usd: float
    cold_storage_per_account_year_usd: float
    storage_per_account_year_usd: float
    cost_per_account_year_usd: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def headline_split(self) -> Split:
        return self.with_standby if self.headline == "with_standby" else self.one_copy


def check(prices: Prices, activity: Activity, deployment: Deployment, measured: Measured) -> None:
    """Refuses inputs the arithmetic would turn into a figure that means nothing."""
    if sum(measured.cpu_s_per_tx_by_role.values()) <= 0 or measured.postings_per_tx <= 0:
        raise ValueError("the cost model needs CPU seconds and postings per transaction > 0")
    if measured.bytes_per_account <= 0 or measured.bytes_per_posting <= 0:
        raise ValueError("the cost model needs bytes per account and per posting > 0 (measured)")
    check_cold_bytes(measured.cold_bytes_per_posting)
    check_inputs(prices, activity, deployment)


def check_cold_bytes(cold_bytes_per_posting: float | None) -> None:
    cold = cold_bytes_per_posting
    if cold is not None and not (math.isfinite(cold) and cold > 0):
        raise ValueError(f"cold bytes per posting must be > 0 when given (got {cold:g})")


def check_inputs(prices: Prices, activity: Activity, deployment: Deployment) -> None:
    """The part of check() the command line can be held to before anything runs."""
    if not (math.isfinite(activity.retention_months) and activity.retention_months >= 0):
        raise ValueError(f"retention_months must be >= 0 (got {activity.retention_months:g})")
    retention_days = activity.retention_months * DAYS_PER_MONTH
    if not (math.isfinite(deployment.hot_days) and deployment.hot_days >= 0):
        raise ValueError(f"hot_days must be >= 0 (got {deployment.hot_days:g})")
    if deployment.hot_days > retention_days * (1 + 1e-9):
        raise ValueError(
            f"hot_days ({deployment.hot_days:g}) exceeds the retention "
            f"({activity.retention_months:g} months = {retention_days:g} days): history "
            "cannot stay hot longer than it is kept"
        )
    copies = deployment.standby_copies
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
        raise ValueError(f"standby_copies must be a whole number >= 0 (got {copies!r})")
    for name in (
        "price_per_hour_usd",
        "storage_price_per_gib_month_usd",
        "object_storage_price_per_gib_month_usd",
    ):
        value = getattr(prices, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be >= 0 (got {value:g})")
    if prices.volume_max_bytes <= 0 or prices.vcpu_count <= 0:
        raise ValueError("the largest volume and the vCPU count must be > 0")


def split(
    prices: Prices, copies: int, accounts_per_node: float, hot_bytes: float, cold_bytes: float
) -> Split:
    compute = prices.price_per_hour_usd * HOURS_PER_YEAR / accounts_per_node * copies
    hot = hot_bytes / GIB * prices.storage_price_per_gib_month_usd * 12 * copies
    cold = cold_bytes / GIB * prices.object_storage_price_per_gib_month_usd * 12
    return Split(copies, compute, hot, cold, compute + hot + cold)


def estimate(
    prices: Prices,
    activity: Activity,
    measured: Measured,
    deployment: Deployment | None = None,
) -> Estimate:
    deployment = deployment or Deployment()
    check(prices, activity, deployment, measured)
    cpu_s_per_tx = sum(measured.cpu_s_per_tx_by_role.values())
    node_tx_per_s = prices.vcpu_count * activity.cpu_utilisation_max / cpu_s_per_tx
    tx_per_account_month = activity.postings_per_account_month / activity.customer_postings_per_tx
    peak_tx_per_account_s = tx_per_account_month / SECONDS_PER_MONTH * activity.peak_to_average
    accounts_by_cpu = node_tx_per_s / peak_tx_per_account_s
    postings_month = tx_per_account_month * measured.postings_per_tx
    hot_months = min(deployment.hot_days / DAYS_PER_MONTH, activity.retention_months)
    cold_months = activity.retention_months - hot_months
    cold_measured = measured.cold_bytes_per_posting is not None
    cold_per_posting = (
        measured.bytes_per_posting
        if measured.cold_bytes_per_posting is None
        else measured.cold_bytes_per_posting
    )
    hot_bytes = (
        measured.bytes_per_account + postings_month * hot_months * measured.bytes_per_posting
    )
    cold_bytes = postings_month * cold_months * cold_per_posting
    accounts_by_storage = prices.volume_max_bytes / hot_bytes
    accounts_per_node = min(accounts_by_cpu, accounts_by_storage)
    one = split(prices, 1, accounts_per_node, hot_bytes, cold_bytes)
    durable = split(prices, 1 + deployment.standby_copies, accounts_per_node, hot_bytes, cold_bytes)
    headline = durable if deployment.standby_copies else one
    return Estimate(
        prices=prices,
        activity=activity,
        deployment=deployment,
        measured=measured,
        cpu_s_per_tx=cpu_s_per_tx,
        node_tx_per_s=node_tx_per_s,
        tx_per_account_month=tx_per_account_month,
        peak_tx_per_account_s=peak_tx_per_account_s,
        accounts_by_cpu=accounts_by_cpu,
        postings_stored_per_account_month=postings_month,
        hot_months=hot_months,
        cold_months=cold_months,
        cold_bytes_per_posting=cold_per_posting,
        cold_bytes_measured=cold_measured,
        hot_bytes_per_account=hot_bytes,
        cold_bytes_per_account=cold_bytes,
        bytes_per_account_stored=hot_bytes + cold_bytes,
        accounts_by_storage=accounts_by_storage,
        accounts_per_node=accounts_per_node,
        limited_by="CPU" if accounts_by_cpu <= accounts_by_storage else "storage volume",
        one_copy=one,
        with_standby=durable,
        headline="with_standby" if deployment.standby_copies else "one_copy",
        compute_per_account_year_usd=headline.compute_usd,
        hot_storage_per_account_year_usd=headline.hot_storage_usd,
        cold_storage_per_account_year_usd=headline.cold_storage_usd,
        storage_per_account_year_usd=headline.hot_storage_usd + headline.cold_storage_usd,
        cost_per_account_year_usd=headline.total_usd,
    )


def headline_text(e: Estimate) -> str:
    """Which figure is the headline, and why, in one phrase."""
    n = e.deployment.standby_copies
    if not n:
        return "one copy: no standby counted (--standby-copies 0)"
    return f"with {_standbys(n)} per shard, because {HEADLINE_WHY}"


def _standbys(n: int) -> str:
    return "one synchronous standby" if n == 1 else f"{n} synchronous standbys"


def cold_source(e: Estimate) -> str:
    if e.cold_bytes_measured:
        return "measured (a cold segment's size)"
    return (
        "not measured (no cold segment size yet): priced at the hot bytes per posting, "
        "which a compact segment can only lower"
    )


def arithmetic(e: Estimate) -> list[str]:
    """The computation, one line per step, with the numbers put in."""
    p, a, m = e.prices, e.activity, e.measured
    roles = " + ".join(f"{s * 1e6:,.1f} µs ({r})" for r, s in m.cpu_s_per_tx_by_role.items())
    stored = f"{e.tx_per_account_month:,.2f} transactions × {m.postings_per_tx:.2f} postings"
    cold_note = "measured" if e.cold_bytes_measured else "not measured: the hot bytes per posting"
    return [
        f"CPU per transaction = {roles} = {e.cpu_s_per_tx * 1e6:,.1f} µs",
        f"node capacity = {p.vcpu_count} vCPU × {a.cpu_utilisation_max:g} / "
        f"{e.cpu_s_per_tx * 1e6:,.1f} µs = {e.node_tx_per_s:,.0f} transactions/s",
        f"transactions per account per month = {a.postings_per_account_month:g} postings / "
        f"{a.customer_postings_per_tx:g} customer postings per transaction "
        f"= {e.tx_per_account_month:,.2f}",
        f"peak load per account = {e.tx_per_account_month:,.2f} / {SECONDS_PER_MONTH:,.0f} s "
        f"× {a.peak_to_average:g} = {e.peak_tx_per_account_s:.3e} transactions/s",
        f"accounts by CPU = {e.node_tx_per_s:,.0f} / {e.peak_tx_per_account_s:.3e} "
        f"= {e.accounts_by_cpu:,.0f}",
        f"months hot = {e.deployment.hot_days:g} days / {DAYS_PER_MONTH:g} days = "
        f"{e.hot_months:g} of {a.retention_months:g} months online; cold: {e.cold_months:g}",
        f"hot bytes per account = {m.bytes_per_account:,.0f} B + {stored} × "
        f"{e.hot_months:g} months × {m.bytes_per_posting:,.0f} B "
        f"= {e.hot_bytes_per_account:,.0f} B",
        f"cold bytes per account = {stored} × {e.cold_months:g} months × "
        f"{e.cold_bytes_per_posting:,.0f} B ({cold_note}) = {e.cold_bytes_per_account:,.0f} B",
        f"bytes per account stored = {e.hot_bytes_per_account:,.0f} B hot + "
        f"{e.cold_bytes_per_account:,.0f} B cold = {e.bytes_per_account_stored:,.0f} B",
        f"accounts by storage = {p.volume_max_bytes / TIB:g} TiB / "
        f"{e.hot_bytes_per_account:,.0f} B hot (cold bytes have no volume) "
        f"= {e.accounts_by_storage:,.0f}",
        f"accounts per node = min(CPU, storage) = {e.accounts_per_node:,.0f} "
        f"(limited by {e.limited_by})",
        *_split_lines(e, e.one_copy, "one copy"),
        *(
            _split_lines(e, e.with_standby, f"with {_standbys(e.deployment.standby_copies)}")
            if e.deployment.standby_copies
            else []
        ),
        f"cost per account per year = ${e.cost_per_account_year_usd:.3e} "
        f"(${e.cost_per_account_year_usd * 1e6:,.0f} per million accounts; headline: "
        f"{'with the standby' if e.deployment.standby_copies else 'one copy'}; one copy "
        f"${e.one_copy.total_usd:.3e}, with the standby ${e.with_standby.total_usd:.3e})",
    ]


def _split_lines(e: Estimate, s: Split, name: str) -> list[str]:
    p = e.prices
    times = f" × {s.copies}" if s.copies != 1 else ""
    return [
        f"{name}: compute = ${p.price_per_hour_usd:g}/h × {HOURS_PER_YEAR:,.0f} h / "
        f"{e.accounts_per_node:,.0f}{times} = ${s.compute_usd:.3e}",
        f"{name}: hot storage = {e.hot_bytes_per_account:,.0f} B / 2^30 × "
        f"${p.storage_price_per_gib_month_usd:g}/GiB-month × 12{times} = "
        f"${s.hot_storage_usd:.3e}",
        f"{name}: cold storage = {e.cold_bytes_per_account:,.0f} B / 2^30 × "
        f"${p.object_storage_price_per_gib_month_usd:g}/GiB-month × 12 (once: the provider "
        f"replicates) = ${s.cold_storage_usd:.3e}",
        f"{name}: total = ${s.compute_usd:.3e} + ${s.hot_storage_usd:.3e} + "
        f"${s.cold_storage_usd:.3e} = ${s.total_usd:.3e} per account-year",
    ]


def sensitivity(
    prices: Prices,
    activity: Activity,
    measured: Measured,
    postings_per_month: list[float],
    deployment: Deployment | None = None,
) -> list[tuple[float, float, float]]:
    """(postings per account per month, compute, storage hot + cold) cost per account-year,
    of the headline split."""
    rows = []
    for postings in postings_per_month:
        changed = replace(activity, postings_per_account_month=postings)
        e = estimate(prices, changed, measured, deployment)
        rows.append((postings, e.compute_per_account_year_usd, e.storage_per_account_year_usd))
    return rows


# ------------------------------------------------------------------ measuring the storage side

RELATIONS: Final = ("accounts", "postings", "transactions", "journal_blocks", "holds")
# What grows with postings (the rest grows with accounts): a posting row, its share of its
# transaction row and of the journal block that committed it, and open holds.
PER_POSTING_RELATIONS: Final = ("postings", "transactions", "journal_blocks", "holds")

SIZES_SQL: Final = """
SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname = current_schema() AND c.relname = ANY($1::text[])
"""


async def relation_sizes(dsn: str) -> dict[str, dict[str, int]]:
    """Per relation: bytes on disk (pg_total_relation_size) and row count, of one shard."""
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=30.0)
    try:
        sizes = {
            row["name"]: int(row["bytes"])
            for row in await connection.fetch(SIZES_SQL, list(RELATIONS), timeout=60.0)
        }
        found = {}
        for name in RELATIONS:
            if name in sizes:
                rows = await connection.fetchval(f"SELECT count(*) FROM {name}", timeout=300.0)
                found[name] = {"bytes": sizes[name], "rows": int(rows)}
        return found
    finally:
        await connection.close(timeout=10.0)


def bytes_per_row(shards: list[dict[str, dict[str, int]]]) -> tuple[float, float]:
    """(bytes per account, bytes per posting) over all shards."""

    def total(names: tuple[str, ...], what: str) -> int:
        return sum(shard.get(n, {}).get(what, 0) for shard in shards for n in names)

    accounts = total(("accounts",), "rows")
    postings = total(("postings",), "rows")
    if not accounts or not postings:
        raise ValueError("no accounts or no postings to measure sizes on")
    return (
        total(("accounts",), "bytes") / accounts,
        total(PER_POSTING_RELATIONS, "bytes") / postings,
    )


async def cold_segment_sizes(dsns: Sequence[str]) -> dict[str, Any]:
    """Every shard's journal written as cold segments (core.store.cold, the format old history
    leaves PostgreSQL in) into a temporary directory: their bytes on disk (every file of every
    segment, manifest included) and the postings they hold. Reads the databases only."""
    import asyncpg

    from core.store.cold import archive
    from core.store.cold.read import Segment

    total_bytes = postings = segments = 0
    with tempfile.TemporaryDirectory(prefix="tally-cold-") as directory:
        for dsn in dsns:
            connection = await asyncpg.connect(dsn, timeout=30.0)
            try:
                run = await archive.archive(
                    connection, Path(directory), created_before_ns=time.time_ns(), timeout_s=300.0
                )
            finally:
                await connection.close(timeout=10.0)
            for path in run.written:
                manifest = Segment(path).manifest
                postings += manifest.posting_count
                total_bytes += sum(p.stat().st_size for p in path.iterdir() if p.is_file())
                segments += 1
    per_posting = round(total_bytes / postings, 1) if postings else None
    return {
        "segments": segments,
        "bytes": total_bytes,
        "postings": postings,
        "cold_bytes_per_posting": per_posting,
    }
