"""An embedded PostgreSQL started on a port picked free, tried again on another when a process
took the port between the pick and the bind (seen in runs beside other test runs)."""

from __future__ import annotations

from collections.abc import Callable

from shards.local.embedded_pg import (
    EmbeddedPostgres,
    EmbeddedPostgresConfig,
    EmbeddedPostgresError,
    free_port,
)

START_ATTEMPT_COUNT = 3


def started_on_a_free_port(config: Callable[[int], EmbeddedPostgresConfig]) -> EmbeddedPostgres:
    """config(port) for a free port, started; another port on 'Address already in use'."""
    for attempt in range(START_ATTEMPT_COUNT):
        server = EmbeddedPostgres(config(free_port()))
        try:
            server.start()
            return server
        except EmbeddedPostgresError as error:
            if "Address already in use" not in str(error) or attempt == START_ATTEMPT_COUNT - 1:
                raise
    raise AssertionError("unreachable")
