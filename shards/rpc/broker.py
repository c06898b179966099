"""One connection to the NATS broker, for the relay and the monitor.

Both keep their own retry loop (with back-off, reloading their state), so a connection here is
tried once per server and given up on, never retried inside nats-py: its `max_reconnect_attempts=0`
means "forever", and a connect that never returns cannot be told to stop.
"""

from __future__ import annotations

import logging
import ssl
from typing import Final

import nats
from nats.aio.client import Client as NatsClient

log = logging.getLogger("tally.broker")

CONNECT_TIMEOUT_S: Final = 10.0
# The names the relay, the monitor and `tally up --stream` agree on (each a flag's default).
DEFAULT_NATS_PORT: Final = 4222
DEFAULT_NATS_URL: Final = f"tls://127.0.0.1:{DEFAULT_NATS_PORT}"
JOURNAL_STREAM: Final = "TALLY_JOURNAL"  # the relay's blocks, subject tally.journal.<shard>
JOURNAL_SUBJECT_PREFIX: Final = "tally.journal"
JOURNAL_SUBJECTS: Final = f"{JOURNAL_SUBJECT_PREFIX}.>"
ALERTS_STREAM: Final = "TALLY_ALERTS"  # the monitor's alerts, subject tally.alerts.<key>
ALERTS_SUBJECT_PREFIX: Final = "tally.alerts"
ALERTS_SUBJECTS: Final = f"{ALERTS_SUBJECT_PREFIX}.>"
DEFAULT_MONITOR_PORT: Final = 50071  # tally.v1.Monitor, the alerts' reader's API


async def _log_error(error: Exception) -> None:
    log.warning("broker: %s: %s", type(error).__name__, error)


async def connect(url: str, tls: ssl.SSLContext | None) -> NatsClient:
    """Raises nats.errors.NoServersError when the broker cannot be reached (after two tries,
    reconnect_time_wait apart); the connection is closed, not re-made, when it drops."""
    return await nats.connect(
        url,
        tls=tls,
        connect_timeout=CONNECT_TIMEOUT_S,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.5,
        error_cb=_log_error,
    )
