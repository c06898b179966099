"""Prometheus metrics read the way Prometheus does: the text of a /metrics endpoint over HTTP,
parsed into samples."""

from __future__ import annotations

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


def parse_samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
