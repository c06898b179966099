"""The report of the Locust suite (bench.locust.suite): results.json, the plots, report.md and
report.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from bench.locust import cost, metrics, plots
from bench.locust.document import Document, cell

SERVER_ROLES: Final = ("nodes", "gateway", "postgres")
SCENARIO_TITLES: Final = {
    "loans": "loan products (disbursements, repayments, fees, holds posted or voided)",
    "transfers": "customer-to-customer transfers",
    "hot": "hot account (every transfer debits @cash)",
    "eod": "end-of-day interest accrual over every loan account",
    "mixed": "a retail bank's day (mostly reads, single-shard postings)",
}


def write(
    report: dict[str, Any],
    out: Path,
    inputs: cost.Inputs,
    cost_scenario: str,
) -> str:
    """Writes everything; returns the summary table as text for the terminal."""
    estimate, cost_notes = cost_estimate(report, inputs, cost_scenario)
    images = draw(report, out, estimate)
    if estimate is not None:
        report["cost"] = {
            **estimate.as_dict(),
            "headline_is": cost.headline_text(estimate),
            "arithmetic": cost.arithmetic(estimate),
        }
    report["cost_notes"] = cost_notes
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    document = build(report, estimate, cost_notes, images)
    document.write(out, "Tally Locust benchmark")
    summary = Document()
    summary.table(*results_table(report))
    if estimate is not None:
        summary.paragraph(cost_line(estimate))
    return summary.markdown()


def cost_estimate(
    report: dict[str, Any], inputs: cost.Inputs, wanted: str
) -> tuple[cost.Estimate | None, list[str]]:
    notes: list[str] = []
    by_name = {r["scenario"]: r for r in report.get("scenarios", [])}
    candidates = [wanted, "transfers", "mixed", "loans", "hot"]
    chosen = next((by_name[n] for n in candidates if n in by_name and by_name[n]["writes"]), None)
    storage = report.get("storage") or {}
    if chosen is None or not storage:
        notes.append("not computed: no scenario with writes, or no storage measurement")
        return None, notes
    if chosen["scenario"] != wanted:
        notes.append(f"CPU per transaction from `{chosen['scenario']}` ({wanted} did not run)")
    writes = chosen["writes"]
    roles = {r: chosen["cpu_s"][r] / writes for r in SERVER_ROLES if r in chosen["cpu_s"]}
    if not roles:
        notes.append("not computed: the server processes' CPU was not measured")
        return None, notes
    postings = chosen.get("journal", {}).get("postings", 0)
    postings_per_tx = postings / writes if postings else 2.0
    if not postings:
        notes.append("postings per transaction assumed 2 (the journal was not readable)")
    cold = inputs.cold_bytes_per_posting
    if cold is None:
        cold = storage.get("cold_bytes_per_posting")
    if cold is None:
        notes.append(
            "no cold segment size was measured: cold history is priced at the hot bytes per "
            "posting (give a measured one with --cold-bytes-per-posting)"
        )
    measured = cost.Measured(
        scenario=chosen["scenario"],
        cpu_s_per_tx_by_role=roles,
        postings_per_tx=postings_per_tx,
        bytes_per_account=storage["bytes_per_account"],
        bytes_per_posting=storage["bytes_per_posting"],
        notes=notes,
        cold_bytes_per_posting=cold,
    )
    return cost.estimate(inputs.prices, inputs.activity, measured, inputs.deployment), notes


def draw(report: dict[str, Any], out: Path, estimate: cost.Estimate | None) -> dict[str, str]:
    images: dict[str, str] = {}
    for result in report.get("scenarios", []):
        name = result["scenario"]
        history = plots.read_history(out / f"{name}_stats_history.csv")
        if plots.throughput_and_latency(history, name, out / f"{name}_locust.png"):
            images[f"{name}/locust"] = f"{name}_locust.png"
        metrics_csv = out / f"{name}_metrics.csv"
        if metrics_csv.exists():
            rows = metrics.read_csv(metrics_csv)
            if plots.node_metrics(rows, name, out / f"{name}_metrics.png"):
                images[f"{name}/metrics"] = f"{name}_metrics.png"
    if plots.comparison(comparison_rows(report), out / "rowlock_comparison.png"):
        images["comparison"] = "rowlock_comparison.png"
    if estimate is not None:
        plots.cost_model(estimate, out / "cost_model.png")
        images["cost"] = "cost_model.png"
    return images


# -------------------------------------------------------------------------------- tables


def results_table(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = [
        "scenario", "users", "calls/s", "writes/s", "p50 ms", "p99 ms", "failures",
        "expected rejections", "retries", "CPU µs/write nodes", "gateway", "postgres", "locust",
        "other cores",
    ]  # fmt: skip
    rows = []
    for r in report.get("scenarios", []):
        us = r["cpu_us_per_write"]
        rows.append(
            [
                r["scenario"], r["users"], r["calls_per_s"], r["writes_per_s"], r["p50_ms"],
                r["p99_ms"], r["failures"], r["expected_rejections"], sum(r["retries"].values()),
                us.get("nodes"), us.get("gateway"), us.get("postgres"), us.get("locust"),
                r.get("other_cores"),
            ]
        )  # fmt: skip
    return headers, rows


def comparison_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in report.get("scenarios", []):
        if "rowlock" in r:
            rows.append(
                {
                    "scenario": r["scenario"],
                    "tally_per_s": r["writes_per_s"],
                    "tally_p50": r["p50_ms"],
                    "tally_p99": r["p99_ms"],
                    "rowlock_per_s": r["rowlock"]["transfers_per_s"],
                    "rowlock_p50": r["rowlock"]["latency_ms"]["p50"],
                    "rowlock_p99": r["rowlock"]["latency_ms"]["p99"],
                    "rowlock_errors": sum(r["rowlock"]["errors"].values()),
                    "rowlock_cpu": r["rowlock"]["cpu_us_per_transfer"],
                }
            )
    return rows


def cost_line(e: cost.Estimate) -> str:
    other = (
        f"one copy (no standby): ${e.one_copy.total_usd:.3e}"
        if e.deployment.standby_copies
        else f"with one synchronous standby it would be ${_with_one_standby(e):.3e}"
    )
    return (
        f"Cost per account per year (ledger tier): **${e.cost_per_account_year_usd:.3e}** "
        f"(${e.cost_per_account_year_usd * 1e6:,.0f} per million accounts), "
        f"{cost.headline_text(e)}; {other}. "
        f"{e.accounts_per_node:,.0f} accounts per node (limited by {e.limited_by}) on "
        f"{e.prices.instance_name} at ${e.prices.price_per_hour_usd:g}/h "
        f"(price of {e.prices.price_date}), {e.activity.postings_per_account_month:g} postings "
        f"per account per month, peak {e.activity.peak_to_average:g}× average, "
        f"{e.activity.retention_months:g} months of postings online: the last "
        f"{e.deployment.hot_days:g} days ({e.hot_months:g} months) hot in PostgreSQL on block "
        f"storage at ${e.prices.storage_price_per_gib_month_usd:g}/GiB-month, the rest cold in "
        f"object storage at ${e.prices.object_storage_price_per_gib_month_usd:g}/GiB-month."
    )


def all_hot(e: cost.Estimate) -> cost.Estimate:
    """The same inputs with every month online kept hot in PostgreSQL."""
    days = e.activity.retention_months * cost.DAYS_PER_MONTH
    deployment = cost.Deployment(hot_days=days, standby_copies=e.deployment.standby_copies)
    return cost.estimate(e.prices, e.activity, e.measured, deployment)


def _with_one_standby(e: cost.Estimate) -> float:
    return _standby_split(e).total_usd


def _standby_split(e: cost.Estimate) -> cost.Split:
    """The split with the standbys: as configured, or with one when none was counted."""
    if e.deployment.standby_copies:
        return e.with_standby
    return cost.split(
        e.prices, 2, e.accounts_per_node, e.hot_bytes_per_account, e.cold_bytes_per_account
    )


def cost_split_table(e: cost.Estimate) -> tuple[list[str], list[list[Any]]]:
    """The cost per account-year split into compute, hot and cold storage: one copy, and
    with the standbys (the headline marked)."""
    headers = [
        "deployment", "machines and hot volumes per shard", "compute", "hot storage",
        "cold storage", "total per account-year", "per million accounts",
    ]  # fmt: skip
    n = e.deployment.standby_copies
    standby = f"with {max(n, 1)} synchronous standby{'s' if n > 1 else ''}"
    if not n:
        standby += " (not counted: --standby-copies 0)"
    splits = [("one copy (no standby)", e.one_copy), (standby, _standby_split(e))]
    if e.cold_months > 0:
        splits.append(
            (
                f"for comparison: all {e.activity.retention_months:g} months hot, one copy (the "
                "model before the hot/cold split)",
                all_hot(e).one_copy,
            )
        )
    rows = []
    for name, s in splits:
        mark = " **(headline)**" if s is e.headline_split else ""
        rows.append(
            [
                name + mark, s.copies, f"${s.compute_usd:.3e}", f"${s.hot_storage_usd:.3e}",
                f"${s.cold_storage_usd:.3e}", f"${s.total_usd:.3e}", f"${s.total_usd * 1e6:,.0f}",
            ]
        )  # fmt: skip
    return headers, rows


# -------------------------------------------------------------------------------- document


def build(
    report: dict[str, Any],
    estimate: cost.Estimate | None,
    cost_notes: list[str],
    images: dict[str, str],
) -> Document:
    d = Document()
    d.heading(1, f"Tally Locust benchmark — {report.get('started_at', '')}")
    cluster = report.get("cluster", {})
    load = report.get("load", {})
    target = cluster.get("target", "?")
    if cluster.get("local"):
        target = f"a local cluster (`tally up --shards {cluster.get('shards')}`)"
    d.paragraph(
        f"Command: `{' '.join(report.get('command', []))}`. Target: {target}, "
        f"{report.get('options', {}).get('population', 0):,} customers (a deposit and a "
        f"loan account each). Wall time of the whole run: {report.get('wall_s', 0):,.0f} s. "
        f"Verdict: **{'clean' if report.get('clean') else 'NOT clean'}** (every scenario made "
        "requests, Locust counted no failure, the end-of-day accrual finished)."
    )
    if load and not load.get("skipped"):
        d.paragraph(
            f"Loading: {load.get('accounts', 0):,} accounts and "
            f"{load.get('opening_transactions', 0):,} opening transactions in "
            f"{load.get('seconds', 0):g} s "
            f"({load.get('items_per_s', 0):,} items/s, result codes {load.get('results')}); "
            f"row-locking ledger seeded in {load.get('rowlock_seconds', '-')} s."
        )
    for note in cluster.get("notes", []):
        d.paragraph(f"Note: {note}.")
    d.heading(2, "Results")
    d.table(*results_table(report))
    d.paragraph(
        "*calls/s*, *p50/p99*: Locust's own statistics over the whole run (one call is one gRPC "
        "request; an end-of-day call carries a batch of accruals). *writes/s*: items answered "
        "CREATED (or REPLAYED after a retry) per second of the run. *failures*: Locust's count: "
        "transport errors after retries and item results the scenario did not expect. "
        "*expected rejections*: results the scenario provokes on purpose (declined overdrafts: "
        "INSUFFICIENT_FUNDS), counted as successes. *retries*: calls or items sent again with the "
        "same ids (UNAVAILABLE, deadline, full queue). *CPU µs/write*: CPU microseconds per "
        "write by process role (the nodes summed; *locust* is the load generator, which shares "
        "the same cores). *other cores*: CPU taken by processes outside the benchmark during the "
        "run, in cores (above ~0.1 the machine was shared and the figures read low)."
    )
    eod = [r for r in report.get("scenarios", []) if "eod" in r]
    for r in eod:
        e = r["eod"]
        d.paragraph(
            f"**End of day**: {e['accruals']:,} interest accruals (one per loan account) "
            f"finished in **{e['seconds']:g} s** ({cell(e['per_s'])} accruals/s, batches of "
            f"{report.get('options', {}).get('eod_batch_size')} from {r['users']} users)."
        )
    _comparison(d, report, images)
    _scenarios(d, report, images)
    _cost(d, estimate, cost_notes, images, report.get("storage") or {})
    _machine(d, report)
    return d


def _comparison(d: Document, report: dict[str, Any], images: dict[str, str]) -> None:
    rows = comparison_rows(report)
    if not rows:
        return
    d.heading(2, "Against a conventional row-locking ledger")
    d.table(
        ["scenario", "Tally transfers/s", "p50 ms", "p99 ms", "row-locking transfers/s",
         "p50 ms", "p99 ms", "row-locking errors", "Tally / row-locking"],
        [
            [r["scenario"], r["tally_per_s"], r["tally_p50"], r["tally_p99"], r["rowlock_per_s"],
             r["rowlock_p50"], r["rowlock_p99"], r["rowlock_errors"],
             f"{r['tally_per_s'] / r['rowlock_per_s']:.2f}x" if r["rowlock_per_s"] else "-"]
            for r in rows
        ],
    )  # fmt: skip
    options = report.get("options", {})
    d.paragraph(
        "The row-locking ledger (bench/common/rowlock.py: one database transaction per transfer, "
        "`SELECT … FOR UPDATE` in id order, durable at COMMIT) runs on the same embedded "
        "PostgreSQL in the same run, with the same customers and the same number of concurrent "
        "clients as Locust users, one transfer per call. It is driven by the closed-loop harness "
        "(bench/common/measure.py) inside the bench process, not by Locust: "
        "Locust's gevent workers cannot drive asyncpg, and a Locust-driven version would add a "
        "gRPC server the design does not have. That flatters it (no RPC hop, no load generator "
        f"of its own on the cores). Measured for {options.get('rowlock_duration_s')} s after "
        f"{2:g} s of warm-up. Tally's `transfers` has {options.get('cross_share')} of its "
        "transfers crossing shards (atomic two-phase commit); the row-locking ledger is one "
        "database, so none of its transfers do."
    )
    if "comparison" in images:
        d.image(images["comparison"], "transfers per second, Tally and the row-locking ledger")


def _scenarios(d: Document, report: dict[str, Any], images: dict[str, str]) -> None:
    d.heading(2, "Per scenario")
    for r in report.get("scenarios", []):
        name = r["scenario"]
        d.heading(3, f"{name}: {SCENARIO_TITLES.get(name, '')}")
        d.paragraph(
            f"{r['users']} users, run {r['run_s']:g} s (Locust exit code {r['locust_exit_code']}); "
            f"{r['calls']:,} calls. Item results: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(r["results"].items()))
            + (f"; retries: {r['retries']}" if r["retries"] else "")
            + f". Journal: {r.get('journal', {})}."
        )
        methods = r.get("by_method", {})
        if methods:
            d.table(
                ["method", "calls", "failures", "calls/s", "p50 ms", "p95 ms", "p99 ms", "max ms"],
                [
                    [m, int(float(s["Request Count"])), int(float(s["Failure Count"])),
                     float(s["Requests/s"]), s["50%"], s["95%"], s["99%"],
                     float(s["Max Response Time"])]
                    for m, s in sorted(methods.items())
                ],
            )  # fmt: skip
        _metrics(d, r)
        for key, caption in (
            ("locust", "Locust: throughput and latency"),
            ("metrics", "node metrics"),
        ):
            if f"{name}/{key}" in images:
                d.image(images[f"{name}/{key}"], f"{name}: {caption}")


def _metrics(d: Document, r: dict[str, Any]) -> None:
    metrics = r.get("metrics", {})
    if not metrics:
        d.paragraph("Node metrics: no metrics endpoints were scraped.")
        return
    d.table(
        ["node", "commits/s", "mean commit ms", "p99 commit ms (bucket)", "mean items/batch",
         "max queue depth", "max held cross-shard pieces"],
        [
            [e, m["commits_per_s"], m["commit_ms_mean"], m["commit_ms_p99_bucket"],
             m["batch_items_mean"], m["queue_depth_max"], m["prepared_pieces_max"]]
            for e, m in sorted(metrics.items())
        ],
    )  # fmt: skip
    gateway = r.get("gateway_metrics") or {}
    text = f"Scraped {r.get('scrapes', 0)} times"
    if r.get("scrape_failures"):
        text += f" (failed scrapes: {r['scrape_failures']})"
    if gateway:
        text += (
            f"; gateway: mean RPC {gateway.get('rpc_ms', '-')} ms, "
            f"{gateway.get('requests_per_shard_call', '-')} client requests and "
            f"{gateway.get('items_per_shard_call', '-')} items per shard call (coalescing)"
        )
        if "cross_shard_ms" in gateway:
            text += f", mean cross-shard transaction {gateway['cross_shard_ms']} ms"
    d.paragraph(text + ".")


def _cost(
    d: Document,
    e: cost.Estimate | None,
    notes: list[str],
    images: dict[str, str],
    storage: dict[str, Any],
) -> None:
    d.heading(2, "Cost model")
    if e is None:
        d.paragraph("Cost model: " + "; ".join(notes))
        return
    d.paragraph(cost_line(e))
    d.table(*cost_split_table(e))
    d.paragraph(
        "*compute*: the instances of a shard (its node, PostgreSQL and share of the gateway; a "
        "synchronous standby is one more instance of the same kind) over the accounts a node "
        "carries. *hot storage*: the bytes PostgreSQL keeps (every account's row and the "
        "postings of the hot days) on block storage, one volume per instance. *cold storage*: "
        "the older postings as segments in object storage, counted once (the provider "
        "replicates them; a standby adds no copy)."
    )
    d.table(["input", "value", "source"], cost_inputs_rows(e))
    d.paragraph(f"Bytes, before issue 13's work ({cost.BYTES_BEFORE_SOURCE}) and in this run:")
    d.table(*bytes_table(e.measured))
    d.code(cost.arithmetic(e))
    d.paragraph("How the headline moves with activity (the other inputs as above):")
    d.table(*sensitivity_table(e))
    d.paragraph(
        "CPU is what the server processes burnt per transaction on this machine (x86; the "
        "default instance is Graviton, so treat the CPU side as an estimate), with the "
        "scenario's shape (for `transfers`: one transfer per call, the dearest shape; batched "
        "writes such as `eod` cost a fraction, see the results table). Bytes per account "
        "are pg_total_relation_size(accounts) / accounts rows; bytes per posting are the sizes "
        "of postings, transactions, journal_blocks and holds / postings rows, over every shard "
        "(indexes included; WAL and free space not); they are the hot bytes. A cold posting's "
        "bytes are a cold segment's measured size when one is given (--cold-bytes-per-posting, "
        "or `cold_bytes_per_posting` in the run's storage measurement), else the hot bytes per "
        "posting. Memory is not modelled: the writer's cache "
        "is bounded and PostgreSQL reads the rest from disk. Override any input with the options "
        "in `python -m bench.locust.suite --help`."
    )
    for note in notes:
        d.paragraph(f"Note: {note}.")
    if storage.get("shards"):
        rows = []
        for number, shard in enumerate(storage["shards"]):
            for relation, v in shard.items():
                rows.append([f"shard {number}", relation, v["rows"], v["bytes"]])
        d.table(["shard", "relation", "rows", "bytes"], rows)
    if "cost" in images:
        d.image(images["cost"], "the cost model")


SENSITIVITY_POSTINGS: Final = (10.0, 30.0, 60.0, 120.0, 300.0)


def sensitivity_table(e: cost.Estimate) -> tuple[list[str], list[list[Any]]]:
    rows = cost.sensitivity(
        e.prices, e.activity, e.measured, list(SENSITIVITY_POSTINGS), e.deployment
    )
    return (
        ["postings per account per month", "compute", "storage (hot + cold)", "total"],
        [[f"{p:g}", f"${c:.3e}", f"${s:.3e}", f"${c + s:.3e}"] for p, c, s in rows],
    )


def cost_inputs_rows(e: cost.Estimate) -> list[list[Any]]:
    p, a, m, dep = e.prices, e.activity, e.measured, e.deployment
    return [
        ["instance", p.instance_name, "chosen: a general-purpose 2 vCPU instance"],
        ["price per hour", f"${p.price_per_hour_usd:g}", f"{p.price_source} ({p.price_date})"],
        ["vCPUs", p.vcpu_count, "the instance"],
        ["block storage (hot)", p.storage_name, ""],
        ["block storage price", f"${p.storage_price_per_gib_month_usd:g}/GiB-mo", p.storage_source],
        ["largest volume", f"{p.volume_max_bytes / cost.TIB:g} TiB", "gp3 limit (hot bytes only)"],
        ["object storage (cold)", p.object_storage_name, "replicated by the provider"],
        ["object storage price", f"${p.object_storage_price_per_gib_month_usd:g}/GiB-mo",
         p.object_storage_source],
        ["postings per account per month", a.postings_per_account_month, "assumed (default)"],
        ["customer postings per transaction", a.customer_postings_per_tx, "a transfer"],
        ["peak-to-average", a.peak_to_average, "assumed (default)"],
        ["CPU usable at peak", a.cpu_utilisation_max, "assumed (default)"],
        ["months of postings online", a.retention_months, "assumed (default)"],
        ["days of history hot in PostgreSQL", f"{dep.hot_days:g} ({e.hot_months:g} months)",
         "chosen (default: a quarter of a year); --hot-days"],
        ["synchronous standbys per shard", dep.standby_copies,
         "tally up --replicas 1, --durability sync-standby (default); --standby-copies"],
        *[
            [f"CPU per transaction: {role}", f"{s * 1e6:,.1f} µs", f"measured, `{m.scenario}`"]
            for role, s in m.cpu_s_per_tx_by_role.items()
        ],
        ["postings per transaction", f"{m.postings_per_tx:.2f}", "measured (journal blocks)"],
        ["bytes per account", f"{m.bytes_per_account:,.0f}", "measured (relation sizes)"],
        ["bytes per posting (hot)", f"{m.bytes_per_posting:,.0f}", "measured (relation sizes)"],
        ["bytes per posting (cold)", f"{e.cold_bytes_per_posting:,.0f}", cost.cold_source(e)],
    ]  # fmt: skip


def bytes_table(m: cost.Measured) -> tuple[list[str], list[list[Any]]]:
    """Bytes per posting, account and transaction (hot, indexes included): before, now, and
    the targets."""
    before, target = cost.BYTES_BEFORE, cost.BYTES_TARGET
    per_transaction = m.bytes_per_posting * m.postings_per_tx
    return (
        ["bytes", "before", "this run", "target"],
        [
            ["per posting", f"{before['posting']:,.1f}", f"{m.bytes_per_posting:,.1f}",
             f"<= {target['posting']:g}"],
            ["per account", f"{before['account']:,.1f}", f"{m.bytes_per_account:,.1f}",
             f"<= {target['account']:g}"],
            ["per transaction", f"{before['transaction']:,.1f} (2 postings)",
             f"{per_transaction:,.1f} ({m.postings_per_tx:.2f} postings)", "-"],
        ],
    )  # fmt: skip


def _machine(d: Document, report: dict[str, Any]) -> None:
    d.heading(2, "Machine")
    d.bullets([f"{k}: `{v}`" for k, v in report.get("host", {}).items()])
    if report.get("postgres"):
        d.heading(3, "PostgreSQL")
        d.bullets([f"{k}: `{v}`" for k, v in report["postgres"].items()])


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.locust.report DIR`: redraw the plots and rewrite the report of a
    run from its results.json (e.g. after changing the cost inputs stored in its options)."""
    import argparse
    import sys

    from bench.locust.options import cost_inputs

    parser = argparse.ArgumentParser(prog="python -m bench.locust.report")
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args(argv).folder
    report = json.loads((folder / "results.json").read_text())
    options = argparse.Namespace(**report["options"])
    print(write(report, folder, cost_inputs(options), options.cost_scenario), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
