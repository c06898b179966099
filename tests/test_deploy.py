"""The Grafana dashboard and the Prometheus config in deploy/ speak of metrics that exist."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from tests.helpers import start_node
from tests.test_metrics import _get

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC = re.compile(r"\btally_[a-z_]+")
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "tally-dashboard.json").read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names.update(METRIC.findall(target["expr"]))
    return names


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


async def test_dashboard_queries_only_exported_metrics(dsn: str) -> None:
    handle = await start_node(dsn, metrics_listen="127.0.0.1:0")
    try:
        text = await asyncio.to_thread(_get, handle.node.metrics_port)
    finally:
        await handle.stop()
    exported = {family(m) for m in METRIC.findall(text)}
    wanted = {family(m) for m in dashboard_metrics()}
    assert len(wanted) >= 10
    assert wanted <= exported, sorted(wanted - exported)


def test_prometheus_config_scrapes_the_metrics_path() -> None:
    # No YAML parser among the dependencies: the few facts that matter, read as text.
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert re.search(r"^\s+metrics_path: /metrics$", text, re.MULTILINE)
    targets = re.findall(r"^\s+- (127\.0\.0\.1:\d+)$", text, re.MULTILINE)
    assert len(targets) >= 1
