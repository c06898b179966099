"""The Grafana dashboard and the Prometheus config in deploy/ speak of metrics that exist."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

from core.flows import rules
from core.store import control as control_store
from shards import control
from shards.gateway.cluster import GatewayConfig
from shards.gateway.server import Gateway
from shards.local.embedded_pg import EmbeddedPostgres, free_port
from shards.monitor.consumer import MonitorConfig
from shards.monitor.server import MonitorServer, MonitorServerConfig
from tests.support import security
from tests.support.helpers import start_node
from tests.support.metrics import metrics_text_on_port
from tests.support.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
METRIC = re.compile(r"\btally_[a-z_]+")
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "tally-dashboard.json").read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):  # a row has none
            names.update(METRIC.findall(target["expr"]))
    return names


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


async def _monitor_metrics(checkpoint: Path) -> str:
    """What a monitor exports before it has read anything (its broker is not there)."""
    config = MonitorServerConfig(
        consumer=MonitorConfig(
            nats_url=f"nats://127.0.0.1:{free_port()}", nats_tls=None, checkpoint_path=checkpoint
        ),
        rule_set=rules.parse_rules("[default]\ncoverage_below = 1.0\n"),
        security=security.server_security(),
        metrics_listen="127.0.0.1:0",
    )
    server = MonitorServer(config)
    await server.start()
    running = asyncio.create_task(server.run())
    try:
        return await asyncio.to_thread(metrics_text_on_port, server.metrics_port)
    finally:
        server.request_stop()
        await asyncio.wait_for(running, timeout=30)


async def test_dashboard_queries_only_exported_metrics(
    pg: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    """What a node and a gateway of a one-shard cluster and a monitor export, before any
    traffic: every family is declared from the start (labelled ones at least by their HELP
    line)."""
    control_name = f"t{os.getpid()}_deploy_control"
    await pg.create_database_async(control_name)
    control_dsn = pg.dsn(control_name)
    connection = await control.connect(control_dsn)
    try:
        await control_store.initialise(connection, 1)
    finally:
        await connection.close()
    handle = await start_node(
        dsn, metrics_listen="127.0.0.1:0", control_dsn=control_dsn, shard_id=0
    )
    try:
        gateway = Gateway(
            GatewayConfig(
                control_dsn=control_dsn,
                listen="127.0.0.1:0",
                metrics_listen="127.0.0.1:0",
                security=security.server_security(),
            )
        )
        await gateway.start()
        running = asyncio.create_task(gateway.run())
        try:
            node_text = await asyncio.to_thread(metrics_text_on_port, handle.node.metrics_port)
            gateway_text = await asyncio.to_thread(metrics_text_on_port, gateway.metrics_port)
        finally:
            gateway.request_stop()
            await asyncio.wait_for(running, timeout=30)
    finally:
        await handle.stop()
    monitor_text = await _monitor_metrics(tmp_path / "checkpoint.json")
    node_families = {family(m) for m in METRIC.findall(node_text)}
    gateway_families = {family(m) for m in METRIC.findall(gateway_text)}
    monitor_families = {family(m) for m in METRIC.findall(monitor_text)}
    # Apart by name, so a sum over a family never counts an item at its gateway and its shard.
    assert not node_families & gateway_families, sorted(node_families & gateway_families)
    assert not node_families & monitor_families, sorted(node_families & monitor_families)
    assert all(name.startswith("tally_gateway_") for name in gateway_families)
    assert all(name.startswith("tally_monitor_") for name in monitor_families)
    wanted = {family(m) for m in dashboard_metrics()}
    assert len(wanted & node_families) >= 10
    assert len(wanted & gateway_families) >= 10
    assert len(wanted & monitor_families) >= 8
    exported = node_families | gateway_families | monitor_families
    assert wanted <= exported, sorted(wanted - exported)


def test_prometheus_config_scrapes_the_metrics_path() -> None:
    # No YAML parser among the dependencies: the few facts that matter, read as text.
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    jobs = re.split(r"^\s+- job_name: ", text, flags=re.MULTILINE)[1:]
    assert sorted(job.split()[0] for job in jobs) == [
        "tally-audit",
        "tally-gateways",
        "tally-monitor",
        "tally-nodes",
    ]
    for job in jobs:
        assert re.search(r"^\s+metrics_path: /metrics$", job, re.MULTILINE)
        targets = re.findall(r"^\s+- (127\.0\.0\.1:\d+)$", job, re.MULTILINE)
        assert len(targets) >= 1
