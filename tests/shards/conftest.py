"""Fixtures of the process tests that need more than one shard: a 4-shard cluster (nodes and a
gateway in this process, on the session's embedded PostgreSQL)."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator

import pytest

from shards.local.embedded_pg import EmbeddedPostgres
from tests.support.cluster import SHARD_COUNT, Cluster
from tests.support.helpers import in_process_cluster

_cluster_numbers = itertools.count(1)


@pytest.fixture
async def cluster(pg: EmbeddedPostgres) -> AsyncIterator[Cluster]:
    prefix = f"c{os.getpid()}_{next(_cluster_numbers)}"
    async with in_process_cluster(pg, prefix, SHARD_COUNT, slot_map_poll_interval_s=0.2) as c:
        yield c
