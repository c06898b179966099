"""The security flags of the `tally` commands, each also read from its TALLY_* variable.

Servers (`tally node`, `gateway`, `audit-serve`): `--tls-cert`, `--tls-key`, `--tls-ca`,
`--client-auth`, `--token-key` (repeatable; the variable takes a comma-separated list) and
`--revoked`. Callers (the terminal commands, `tally credentials` aside): `--ca`, `--cert`,
`--key`, `--token`; with none of them given, the credentials directory of `tally up`
(DATA_DIR/tls, DATA_DIR from `--data-dir` or TALLY_DATA_DIR, default `.tally`) and its admin
identity, so the quick start's commands need no flags.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Final

from shards.security import directory
from shards.security.credentials import (
    CLIENT_AUTH_MODES,
    ClientSecurity,
    SecurityConfigError,
    ServerSecurity,
)

LOCAL_DIRECTORY: Final = "tls"
DEFAULT_DATA_DIR: Final = ".tally"


def _env(name: str, default: str = "") -> str:
    return os.environ.get("TALLY_" + name.upper().replace("-", "_"), default)


def local_directory(data_dir: Path | str | None = None) -> Path:
    """Where `tally up` keeps its credentials."""
    return Path(data_dir or _env("data_dir", DEFAULT_DATA_DIR)) / LOCAL_DIRECTORY


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS and authentication (every listener is TLS)")
    group.add_argument(
        "--tls-cert",
        default=_env("tls_cert"),
        metavar="PATH",
        help="this server's certificate chain (PEM); in a cluster, also what it presents to "
        "its peers, so it must carry the role cluster (tally credentials issue --role cluster)",
    )
    group.add_argument("--tls-key", default=_env("tls_key"), metavar="PATH", help="its key")
    group.add_argument(
        "--tls-ca",
        default=_env("tls_ca"),
        metavar="PATH",
        help="the CA bundle client and peer certificates are checked against",
    )
    group.add_argument(
        "--client-auth",
        choices=CLIENT_AUTH_MODES,
        default=_env("client_auth", "certificate"),
        help="how the client listener authenticates callers: certificate (mutual TLS) or "
        "token (a bearer token on every call) (default %(default)s)",
    )
    group.add_argument(
        "--token-key",
        action="append",
        default=None,
        metavar="PATH",
        help="an Ed25519 public key bearer tokens may be signed with (repeat to rotate; "
        "default: $TALLY_TOKEN_KEY, comma-separated)",
    )
    group.add_argument(
        "--revoked",
        default=_env("revoked"),
        metavar="PATH",
        help="revoked credential ids, one a line, re-read when it changes",
    )


def server_security(args: argparse.Namespace) -> ServerSecurity:
    token_keys = args.token_key or [k for k in _env("token_key").split(",") if k.strip()]
    if args.client_auth == "token" and not token_keys:
        raise SecurityConfigError("--client-auth token needs at least one --token-key")
    return ServerSecurity.from_files(
        args.tls_cert,
        args.tls_key,
        args.tls_ca,
        args.client_auth,
        [k.strip() for k in token_keys],
        args.revoked,
    )


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "credentials (default: tally up's admin identity in DATA_DIR/tls)"
    )
    group.add_argument(
        "--ca", default=_env("ca"), metavar="PATH", help="CA bundle the server is checked against"
    )
    group.add_argument(
        "--cert", default=_env("cert"), metavar="PATH", help="client certificate (mutual TLS)"
    )
    group.add_argument("--key", default=_env("key"), metavar="PATH", help="its key")
    group.add_argument(
        "--token",
        default=_env("token"),
        metavar="PATH",
        help="a file holding a bearer token (for a server with --client-auth token)",
    )


def client_security(args: argparse.Namespace) -> ClientSecurity:
    """The caller's credentials: as given, or tally up's admin identity."""
    if args.ca or args.cert or args.key or args.token:
        ca = args.ca or str(directory.Paths(local_directory()).certificate(directory.CA))
        return ClientSecurity.from_files(ca, args.cert, args.key, args.token)
    root = local_directory()
    if not directory.Paths(root).certificate(directory.ADMIN).exists():
        raise SecurityConfigError(
            f"no credentials: give --ca with --cert/--key or --token (or TALLY_CA, TALLY_CERT, "
            f"TALLY_KEY, TALLY_TOKEN), or run where tally up keeps them ({root} not found)"
        )
    return directory.client_security(root)
