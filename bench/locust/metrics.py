"""What the cluster's Prometheus metrics showed during a Locust run, scraped by the bench itself.

Every process `tally up` starts prints `tally: metrics of <name> on http://HOST:PORT/metrics`
before its ready line; a remote cluster's endpoints are given with `--metrics URL`. During each
scenario the bench scrapes every endpoint about once a second and keeps every `tally_*` sample
(metrics.csv), from which the plots and the report derive commit latency, batch size, commits
per second, queue depth and held cross-shard pieces over time.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import re
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

SCRAPE_INTERVAL_S: Final = 1.0
SCRAPE_TIMEOUT_S: Final = 2.0
SAMPLE_PREFIX: Final = "tally_"
# Buckets are kept only for the histograms whose quantiles the report derives (the rest are
# hundreds of series per scrape that nothing reads).
BUCKETS_KEPT: Final = frozenset({"tally_commit_duration_seconds_bucket"})
_NAMED_LINE: Final = re.compile(r"tally: metrics of (\S+) on (https?://\S+)")
_BARE_LINE: Final = re.compile(r"tally: metrics on (https?://\S+)")


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # node-0, gateway, or host:port for one given by URL
    url: str


def endpoints_from_lines(lines: Iterable[str]) -> list[Endpoint]:
    """The metrics endpoints announced on `tally up`'s (or a node's) standard output."""
    found: list[Endpoint] = []
    for line in lines:
        named = _NAMED_LINE.search(line)
        if named:
            found.append(Endpoint(named.group(1), named.group(2)))
            continue
        bare = _BARE_LINE.search(line)
        if bare:
            found.append(Endpoint(f"process-{len(found)}", bare.group(1)))
    return found


def endpoints_from_urls(urls: Sequence[str]) -> list[Endpoint]:
    endpoints = []
    for url in urls:
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        if not url.rstrip("/").endswith("/metrics"):
            url = url.rstrip("/") + "/metrics"
        host = url.split("://", 1)[1].split("/", 1)[0]
        endpoints.append(Endpoint(host, url))
    return endpoints


# (seconds since the scrape started, endpoint, sample name, labels as k=v;k=v, value)
Row = tuple[float, str, str, str, float]


def parse_samples(text: str) -> list[tuple[str, str, float]]:
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if not name.startswith(SAMPLE_PREFIX) or name.endswith("_created"):
                continue
            if name.endswith("_bucket") and name not in BUCKETS_KEPT:
                continue
            labels = ";".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples.append((sample.name, labels, float(sample.value)))
    return samples


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        text: str = response.read().decode()
        return text


@dataclass(slots=True)
class Scraper:
    """Scrapes every endpoint each interval until stopped; failures are counted, not raised
    (a process may be busy or restarting: the gap shows in the plots)."""

    endpoints: list[Endpoint]
    interval_s: float = SCRAPE_INTERVAL_S
    rows: list[Row] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    scrapes: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        if not self.endpoints:
            return
        started = time.monotonic()
        while not stop.is_set():
            await asyncio.gather(*(self._scrape(e, started) for e in self.endpoints))
            self.scrapes += 1
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass

    async def _scrape(self, endpoint: Endpoint, started: float) -> None:
        try:
            text = await asyncio.to_thread(_fetch, endpoint.url)
        except (OSError, ValueError):
            self.failures[endpoint.name] += 1
            return
        at_s = round(time.monotonic() - started, 3)
        self.rows.extend(
            (at_s, endpoint.name, n, labels, v) for n, labels, v in parse_samples(text)
        )

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["t_s", "endpoint", "name", "labels", "value"])
            writer.writerows(self.rows)


def read_csv(path: Path) -> list[Row]:
    with path.open(newline="") as file:
        reader = csv.reader(file)
        next(reader, None)
        return [(float(t), e, n, labels, float(v)) for t, e, n, labels, v in reader]


# ------------------------------------------------------------------------------ derived series


def series(rows: Iterable[Row], name: str, keep: str = "") -> dict[str, list[tuple[float, float]]]:
    """Per endpoint: (t, value) of one sample name, summed over label sets containing `keep`
    (e.g. "le=+Inf"), in time order."""
    summed: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for t, endpoint, sample, labels, value in rows:
        if sample == name and keep in labels:
            summed[endpoint][t] += value
    return {e: sorted(points.items()) for e, points in summed.items()}


def rate(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per-second increase of a counter between consecutive scrapes."""
    out = []
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t1 > t0:
            out.append((t1, max(0.0, v1 - v0) / (t1 - t0)))
    return out


def ratio_of_increases(
    numerator: list[tuple[float, float]], denominator: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Per interval: Δnumerator / Δdenominator (a histogram's mean: Δsum / Δcount)."""
    by_t = dict(denominator)
    out = []
    previous: tuple[float, float, float] | None = None
    for t, value in numerator:
        if t not in by_t:
            continue
        if previous is not None:
            d_num, d_den = value - previous[1], by_t[t] - previous[2]
            if d_den > 0:
                out.append((t, d_num / d_den))
        previous = (t, value, by_t[t])
    return out


def histogram_mean(rows: list[Row], name: str) -> dict[str, list[tuple[float, float]]]:
    sums, counts = series(rows, name + "_sum"), series(rows, name + "_count")
    return {e: ratio_of_increases(sums[e], counts.get(e, [])) for e in sums}


def histogram_quantile_over_run(rows: list[Row], name: str, quantile: float) -> dict[str, float]:
    """Per endpoint: the quantile of the observations made between the first and the last
    scrape (bucket upper bound, as Prometheus' histogram_quantile without interpolation)."""
    first: dict[tuple[str, float], float] = {}
    last: dict[tuple[str, float], float] = {}
    for _, endpoint, sample, labels, value in rows:
        if sample == name + "_bucket":
            key = (endpoint, _le(labels))
            first.setdefault(key, value)
            last[key] = value
    by_endpoint: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (endpoint, bound), value in last.items():
        by_endpoint[endpoint].append((bound, value - first[(endpoint, bound)]))
    result = {}
    for endpoint, buckets in by_endpoint.items():
        buckets.sort()
        total = buckets[-1][1] if buckets else 0.0
        if total <= 0:
            continue
        result[endpoint] = next(b for b, count in buckets if count >= quantile * total)
    return result


def _le(labels: str) -> float:
    for part in labels.split(";"):
        if part.startswith("le="):
            return float(part[3:])
    return float("inf")


def increase_over_run(rows: list[Row], name: str) -> dict[str, float]:
    return {e: points[-1][1] - points[0][1] for e, points in series(rows, name).items() if points}


def summary(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Per node endpoint, over the whole scenario: mean and p99 commit latency (ms), mean batch
    size (items), commits per second, highest queue depth and held cross-shard pieces."""
    out: dict[str, dict[str, float]] = {}
    duration = {e: p[-1][0] - p[0][0] for e, p in series(rows, "tally_batch_items_count").items()}
    commit_sum = increase_over_run(rows, "tally_commit_duration_seconds_sum")
    commit_count = increase_over_run(rows, "tally_commit_duration_seconds_count")
    items_sum = increase_over_run(rows, "tally_batch_items_sum")
    items_count = increase_over_run(rows, "tally_batch_items_count")
    p99 = histogram_quantile_over_run(rows, "tally_commit_duration_seconds", 0.99)
    depth = series(rows, "tally_queue_depth")
    pieces = series(rows, "tally_prepared_pieces")
    for endpoint, commits in commit_count.items():
        seconds = duration.get(endpoint, 0.0)
        out[endpoint] = {
            "commits": commits,
            "commits_per_s": round(commits / seconds, 1) if seconds else 0.0,
            "commit_ms_mean": round(1000 * commit_sum[endpoint] / commits, 2) if commits else 0.0,
            "commit_ms_p99_bucket": round(1000 * p99.get(endpoint, 0.0), 2),
            "batch_items_mean": (
                round(items_sum.get(endpoint, 0.0) / items_count[endpoint], 1)
                if items_count.get(endpoint)
                else 0.0
            ),
            "queue_depth_max": max((v for _, v in depth.get(endpoint, [])), default=0.0),
            "prepared_pieces_max": max((v for _, v in pieces.get(endpoint, [])), default=0.0),
        }
    return out
