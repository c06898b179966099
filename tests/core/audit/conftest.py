"""Books with cold history (tests.support.cold_books), made once per module that asks."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from itertools import count

import pytest

from shards.local.embedded_pg import EmbeddedPostgres
from tests.support.cold_books import ColdBooks, make_cold_books

_numbers = count()


@pytest.fixture(scope="module")
async def cold_books(
    pg: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ColdBooks]:
    directory = tmp_path_factory.mktemp("cold_books")
    yield await make_cold_books(pg, f"cold_books_{os.getpid()}_{next(_numbers)}", directory)
