"""The benchmarks' credentials: every Tally listener is TLS, every call authenticated.

A bench that starts its own node or cluster uses a credentials directory of its own
(shards.security.directory, as `tally credentials init` makes it; `tally up` keeps one in
DATA_DIR/tls): the processes it starts get the directory's server flags, and its clients present
the directory's admin identity (roles admin, poster, reader, auditor over every account).

Against a target someone else runs (--target), the clients present what the `tally` terminal
commands present: --ca with --cert/--key or --token (or TALLY_CA, TALLY_CERT, TALLY_KEY,
TALLY_TOKEN), by default the admin identity of `tally up`'s DATA_DIR/tls (DATA_DIR from
TALLY_DATA_DIR, default .tally).

The credentials travel as paths (a Locust subprocess is given them on its command line, its
workers read the same paths); the keys stay in their 0600 files.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from shards.security import directory, flags
from shards.security.credentials import ClientSecurity, SecurityConfigError


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """Where a bench client's credentials are: the CA bundle servers are checked against, and a
    certificate with its key (mutual TLS) or a file holding a bearer token."""

    ca: str
    certificate: str = ""
    key: str = ""
    token: str = ""

    @classmethod
    def admin_of(cls, root: Path) -> ClientCredentials:
        """The admin identity of a credentials directory."""
        paths = directory.Paths(root)
        return cls(
            str(paths.certificate(directory.CA)),
            str(paths.certificate(directory.ADMIN)),
            str(paths.key(directory.ADMIN)),
        )

    @classmethod
    def of(
        cls, ca: str = "", certificate: str = "", key: str = "", token: str = ""
    ) -> ClientCredentials:
        """As given, or (nothing given) tally up's admin identity, as the `tally` commands
        choose theirs (shards.security.flags.client_security)."""
        if not (ca or certificate or key or token):
            return cls.admin_of(flags.local_directory())
        ca = ca or str(directory.Paths(flags.local_directory()).certificate(directory.CA))
        return cls(ca, certificate, key, token)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientCredentials:
        """From the flags shards.security.flags.add_client_flags adds (--ca --cert --key
        --token); checked at once, so a bad path fails before anything starts."""
        credentials = cls.of(args.ca, args.cert, args.key, args.token)
        credentials.security()
        return credentials

    def security(self) -> ClientSecurity:
        """The files' contents; SecurityConfigError names what is missing or unreadable."""
        return ClientSecurity.from_files(self.ca, self.certificate, self.key, self.token)

    def client_flags(self) -> list[str]:
        """The same credentials as the --ca --cert --key --token flags of the `tally` commands
        and of the bench clients (add_client_flags)."""
        given = (("--ca", self.ca), ("--cert", self.certificate), ("--key", self.key),
                 ("--token", self.token))  # fmt: skip
        return [part for flag, value in given if value for part in (flag, value)]

    def locust_flags(self) -> list[str]:
        """The same credentials for bench/locust/locustfile.py's --tally-ca ... options, as
        absolute paths (Locust runs in the repository root, this process maybe not)."""
        given = (
            ("--tally-ca", self.ca),
            ("--tally-cert", self.certificate),
            ("--tally-key", self.key),
            ("--tally-token", self.token),
        )
        return [f"{flag}={Path(value).absolute()}" for flag, value in given if value]


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """--ca --cert --key --token, exactly as the `tally` terminal commands take them."""
    flags.add_client_flags(parser)


def parse_client_credentials(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> ClientCredentials:
    """The client credentials of a bench's command line, or the parser's usage error."""
    try:
        return ClientCredentials.from_args(args)
    except SecurityConfigError as error:
        parser.error(f"credentials: {error}")
