"""Prometheus metrics read the way Prometheus does: the text of a /metrics endpoint over HTTP,
parsed into samples."""

from __future__ import annotations

import asyncio
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# (sample name, its labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

SCRAPE_TIMEOUT_S = 5.0


def metrics_text_at(url: str) -> str:
    """The body of a metrics endpoint (blocking: run it in a thread from async code)."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        body: bytes = response.read()
    return body.decode()


def metrics_text_on_port(port: int) -> str:
    """The body of the /metrics endpoint on a loopback port (blocking, as metrics_text_at)."""
    return metrics_text_at(f"http://127.0.0.1:{port}/metrics")


_SCRAPER = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as response:\n"
    "    sys.stdout.write(response.read().decode())\n"
)


async def metrics_text_from_another_process(port: int) -> str:
    """The body of a loopback /metrics endpoint, read by a process of its own, as Prometheus
    reads it. A thread of the test's process would wait for the GIL behind a busy event loop
    for every step of its request (seconds to minutes when the loop never blocks), which a
    scraper elsewhere never does. AssertionError when the scrape fails."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SCRAPER, f"http://127.0.0.1:{port}/metrics", str(SCRAPE_TIMEOUT_S),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()


def parse_samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
