"""How durable a node requires its database's commits to be before it writes (`--durability`).

A node answers a transaction as applied once its block's COMMIT returns; what that promise is
worth is the database's: with `sync-standby` (the default) the node writes only on a primary
that names a synchronous standby (`synchronous_standby_names`), so an acknowledged transaction
is flushed on two servers and survives the loss of either; with `single-server` it accepts one
server's disk (a development machine, or a managed database whose own storage replication is
trusted instead), because it was told so explicitly. Either way it refuses a standby (a server
in recovery), `fsync` or `full_page_writes` off, and a synchronous_commit that acknowledges
before the flush. Checked on every connection a writer commits on (at start, and after every
reconnect, say to a new primary after a failover): a refusal is said, and the writer retries
until the database is as durable as required.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["MODES", "SINGLE_SERVER", "SYNC_STANDBY", "refusal"]

SYNC_STANDBY: Final = "sync-standby"
SINGLE_SERVER: Final = "single-server"
MODES: Final = (SYNC_STANDBY, SINGLE_SERVER)
# synchronous_commit values whose COMMIT returns only after the local flush (and, with a
# synchronous standby, its flush or apply there).
_FLUSHING_COMMITS: Final = frozenset({"on", "remote_apply"})


def refusal(mode: str, settings: Mapping[str, str]) -> str | None:
    """Why a writer must not commit on a database with these settings (None: it may)."""
    if mode not in MODES:
        raise ValueError(f"unknown durability {mode!r}: one of {', '.join(MODES)}")
    if settings.get("in_recovery") == "on":
        return "the database is a standby (in recovery): a writer needs the primary"
    for name in ("fsync", "full_page_writes"):
        if settings.get(name) != "on":
            value = settings.get(name, "unknown")
            return f"{name} is {value}: a crash could lose or tear acknowledged transactions"
    commit = settings.get("synchronous_commit", "unknown")
    if commit not in _FLUSHING_COMMITS:
        return f"synchronous_commit is {commit}: COMMIT would return before the flush"
    if mode == SYNC_STANDBY and not settings.get("synchronous_standby_names", "").strip():
        return (
            "synchronous_standby_names is empty, so an acknowledged transaction would be on "
            "this one server's disk: configure a synchronous standby, or accept one copy "
            f"explicitly with --durability {SINGLE_SERVER}"
        )
    return None
