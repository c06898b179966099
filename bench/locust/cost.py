"""The cost model: accounts one ledger node can carry, and the cost per account per year.

Inputs, each stated in the report:
- the instance: a named general-purpose 2 vCPU cloud instance, its on-demand price per hour,
  where that price comes from and its date (override with --price-per-hour and friends);
- block storage price per GiB-month and the largest volume;
- measured: CPU seconds per transaction of each server role (shard nodes, gateway,
  PostgreSQL; the load generator is not the ledger and is left out), postings per transaction,
  bytes on disk per account and per posting (PostgreSQL's own relation sizes, indexes and TOAST
  included, divided by row counts);
- the activity profile: postings per account per month, the peak-to-average ratio of the
  busiest hour, the share of the cores a node may use at peak, months of postings kept online.

A "node" is one instance running one shard: its node process, its PostgreSQL and its share of
the stateless gateway, i.e. every server role measured.

    cpu_s_per_tx             = sum of the roles' CPU seconds per transaction
    node_tx_per_s            = vcpus * cpu_utilisation_max / cpu_s_per_tx
    tx_per_account_month     = postings_per_account_month / customer_postings_per_tx
    peak_tx_per_account_s    = tx_per_account_month / seconds_per_month * peak_to_average
    accounts_by_cpu          = node_tx_per_s / peak_tx_per_account_s
    bytes_per_account_stored = bytes_per_account + tx_per_account_month * postings_per_tx
                               * retention_months * bytes_per_posting

An account's postings are its own (60 a month: 30 transfers in or out, each posting to two
customer accounts); a transaction stores postings_per_tx postings in all (measured: a
cross-shard transfer adds the clearing account's legs on each shard).
    accounts_by_storage      = volume_max_bytes / bytes_per_account_stored
    accounts_per_node        = min(accounts_by_cpu, accounts_by_storage)
    compute_per_account_year = price_per_hour * hours_per_year / accounts_per_node
    storage_per_account_year = bytes_per_account_stored / GiB * price_per_gib_month * 12
    cost_per_account_year    = compute_per_account_year + storage_per_account_year
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

HOURS_PER_YEAR: Final = 365.25 * 24
SECONDS_PER_MONTH: Final = 365.25 * 86_400 / 12
GIB: Final = 2**30
TIB: Final = 2**40


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


@dataclass(frozen=True, slots=True)
class Activity:
    postings_per_account_month: float = 60.0  # about two a day on each customer account
    customer_postings_per_tx: float = 2.0  # a transfer posts to two customer accounts
    peak_to_average: float = 5.0  # the busiest hour (payday, month end) against the average
    cpu_utilisation_max: float = 0.7  # headroom kept at that peak
    retention_months: float = 24.0  # postings kept online; older ones are archived


@dataclass(frozen=True, slots=True)
class Measured:
    scenario: str
    cpu_s_per_tx_by_role: dict[str, float]
    postings_per_tx: float
    bytes_per_account: float
    bytes_per_posting: float
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Estimate:
    prices: Prices
    activity: Activity
    measured: Measured
    cpu_s_per_tx: float
    node_tx_per_s: float
    tx_per_account_month: float
    peak_tx_per_account_s: float
    accounts_by_cpu: float
    bytes_per_account_stored: float
    accounts_by_storage: float
    accounts_per_node: float
    limited_by: str
    compute_per_account_year_usd: float
    storage_per_account_year_usd: float
    cost_per_account_year_usd: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(prices: Prices, activity: Activity, measured: Measured) -> Estimate:
    cpu_s_per_tx = sum(measured.cpu_s_per_tx_by_role.values())
    if cpu_s_per_tx <= 0 or measured.postings_per_tx <= 0:
        raise ValueError("the cost model needs CPU seconds and postings per transaction > 0")
    node_tx_per_s = prices.vcpu_count * activity.cpu_utilisation_max / cpu_s_per_tx
    tx_per_account_month = activity.postings_per_account_month / activity.customer_postings_per_tx
    peak_tx_per_account_s = tx_per_account_month / SECONDS_PER_MONTH * activity.peak_to_average
    accounts_by_cpu = node_tx_per_s / peak_tx_per_account_s
    bytes_per_account_stored = (
        measured.bytes_per_account
        + tx_per_account_month
        * measured.postings_per_tx
        * activity.retention_months
        * measured.bytes_per_posting
    )
    accounts_by_storage = prices.volume_max_bytes / bytes_per_account_stored
    accounts_per_node = min(accounts_by_cpu, accounts_by_storage)
    compute = prices.price_per_hour_usd * HOURS_PER_YEAR / accounts_per_node
    storage = bytes_per_account_stored / GIB * prices.storage_price_per_gib_month_usd * 12
    return Estimate(
        prices=prices,
        activity=activity,
        measured=measured,
        cpu_s_per_tx=cpu_s_per_tx,
        node_tx_per_s=node_tx_per_s,
        tx_per_account_month=tx_per_account_month,
        peak_tx_per_account_s=peak_tx_per_account_s,
        accounts_by_cpu=accounts_by_cpu,
        bytes_per_account_stored=bytes_per_account_stored,
        accounts_by_storage=accounts_by_storage,
        accounts_per_node=accounts_per_node,
        limited_by="CPU" if accounts_by_cpu <= accounts_by_storage else "storage volume",
        compute_per_account_year_usd=compute,
        storage_per_account_year_usd=storage,
        cost_per_account_year_usd=compute + storage,
    )


def arithmetic(e: Estimate) -> list[str]:
    """The computation, one line per step, with the numbers put in."""
    p, a, m = e.prices, e.activity, e.measured
    roles = " + ".join(f"{s * 1e6:,.1f} µs ({r})" for r, s in m.cpu_s_per_tx_by_role.items())
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
        f"bytes per account stored = {m.bytes_per_account:,.0f} B + "
        f"{e.tx_per_account_month:,.2f} transactions × {m.postings_per_tx:.2f} postings × "
        f"{a.retention_months:g} months × {m.bytes_per_posting:,.0f} B "
        f"= {e.bytes_per_account_stored:,.0f} B",
        f"accounts by storage = {p.volume_max_bytes / TIB:g} TiB / "
        f"{e.bytes_per_account_stored:,.0f} B = {e.accounts_by_storage:,.0f}",
        f"accounts per node = min(CPU, storage) = {e.accounts_per_node:,.0f} "
        f"(limited by {e.limited_by})",
        f"compute per account-year = ${p.price_per_hour_usd:g}/h × {HOURS_PER_YEAR:,.0f} h / "
        f"{e.accounts_per_node:,.0f} = ${e.compute_per_account_year_usd:.3e}",
        f"storage per account-year = {e.bytes_per_account_stored:,.0f} B / 2^30 × "
        f"${p.storage_price_per_gib_month_usd:g}/GiB-month × 12 = "
        f"${e.storage_per_account_year_usd:.3e}",
        f"cost per account per year = ${e.compute_per_account_year_usd:.3e} + "
        f"${e.storage_per_account_year_usd:.3e} = ${e.cost_per_account_year_usd:.3e} "
        f"(${e.cost_per_account_year_usd * 1e6:,.0f} per million accounts)",
    ]


def sensitivity(
    prices: Prices, activity: Activity, measured: Measured, postings_per_month: list[float]
) -> list[tuple[float, float, float]]:
    """(postings per account per month, compute, storage) cost per account-year."""
    rows = []
    for postings in postings_per_month:
        changed = replace(activity, postings_per_account_month=postings)
        e = estimate(prices, changed, measured)
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
