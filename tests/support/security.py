"""The tests' credentials: one credentials directory per test process (a CA, the cluster
certificate, an admin identity, a token key, as `tally credentials init` makes them), and
channels that present them.

Every server in the tests is TLS, as in production: in-process nodes, gateways and audit
servers get `server_security()`; spawned `tally` processes get `server_flags()`; clients open
`channel(target)` (the admin identity: every role, every account) and the internal listener
is reached with `cluster_channel(target)` (the cluster identity).
"""

from __future__ import annotations

import atexit
import datetime
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import grpc

from core.authority import Role
from shards.security import directory
from shards.security.credentials import ClientSecurity, ServerSecurity, aio_channel


@cache
def root() -> Path:
    """This process's credentials directory (made on first use, removed at exit)."""
    base = Path(tempfile.mkdtemp(prefix="tally-test-tls-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    directory.init(base / "tls")
    return base / "tls"


def server_security(client_auth: str = "certificate") -> ServerSecurity:
    return directory.server_security(root(), client_auth)


def server_flags() -> list[str]:
    """What a spawned `tally node`, `gateway` or `audit-serve` needs to serve TLS."""
    return directory.server_flags(root())


def client_environment() -> dict[str, str]:
    """TALLY_* variables that make a spawned `tally` terminal command present the admin
    identity."""
    paths = directory.Paths(root())
    return {
        "TALLY_CA": str(paths.certificate(directory.CA)),
        "TALLY_CERT": str(paths.certificate(directory.ADMIN)),
        "TALLY_KEY": str(paths.key(directory.ADMIN)),
    }


def client_flags() -> list[str]:
    """The same as command-line flags."""
    paths = directory.Paths(root())
    return [
        f"--ca={paths.certificate(directory.CA)}",
        f"--cert={paths.certificate(directory.ADMIN)}",
        f"--key={paths.key(directory.ADMIN)}",
    ]


@cache
def admin() -> ClientSecurity:
    return directory.client_security(root(), directory.ADMIN)


@cache
def cluster() -> ClientSecurity:
    return directory.client_security(root(), directory.CLUSTER)


def channel(target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """An aio channel to a client listener, as the admin identity."""
    return aio_channel(target, admin(), options)


def cluster_channel(target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """An aio channel to an internal listener, as the cluster identity."""
    return aio_channel(target, cluster(), options)


_issued = iter(range(1, 1_000_000))


def identity(
    roles: Iterable[Role],
    accounts: Iterable[str] = (),
    name: str = "",
    valid_for: datetime.timedelta = datetime.timedelta(days=1),
) -> ClientSecurity:
    """A client certificate of the tests' CA for these roles and account patterns."""
    name = name or "test-identity"
    out = root() / "issued" / f"{name}-{next(_issued)}"
    certificate, key, _ = directory.issue_certificate(
        root(), name, frozenset(roles), tuple(accounts), valid_for=valid_for, out=out, file=name
    )
    return ClientSecurity(admin().ca, certificate.read_bytes(), key.read_bytes())


def token(
    roles: Iterable[Role],
    accounts: Iterable[str] = (),
    name: str = "",
    valid_for: datetime.timedelta = datetime.timedelta(days=1),
) -> ClientSecurity:
    """A bearer token signed with the tests' token key (TLS server-checked, no certificate)."""
    name = name or f"test-token-{next(_issued)}"
    text, _ = directory.issue_token(root(), name, frozenset(roles), tuple(accounts), valid_for)
    return ClientSecurity(admin().ca, token=text)
