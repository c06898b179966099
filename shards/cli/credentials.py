"""`tally credentials`: make a credentials directory, issue scoped identities, revoke them.

    tally credentials init [--dir DIR] [--host H ...]
    tally credentials issue NAME --role ROLE [--role ...] [--accounts PATTERN ...]
                            [--token] [--valid-days N] [--host H ...] [--out DIR] [--dir DIR]
    tally credentials issue NAME --broker [--host H ...] [--out DIR] [--dir DIR]
    tally credentials revoke ID [--reason TEXT] [--dir DIR]

DIR defaults to tally up's (DATA_DIR/tls). A certificate and its key are written to --out
(default: DIR/issued/NAME); a token is printed on stdout (and nothing else is). Every issue is
noted in DIR/issued.jsonl with the credential's id, which is what `revoke` takes.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from pathlib import Path
from typing import Any, Final

from core.authority import Role, ScopeError, check_pattern, parse_roles
from shards.security import directory
from shards.security.flags import local_directory
from shards.security.pki import CertificateError

COMMAND: Final = "credentials"
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
SCOPED_ROLES: Final = frozenset({Role.POSTER, Role.READER, Role.ADMIN, Role.MONITOR})


def add_command(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        COMMAND, help="issue and revoke certificates and bearer tokens (roles, account scopes)"
    )
    actions = parser.add_subparsers(dest="credentials_action", required=True)
    init = actions.add_parser("init", help="make a CA, a cluster certificate, an admin identity")
    issue = actions.add_parser("issue", help="a certificate (default) or a token for a role")
    revoke = actions.add_parser("revoke", help="revoke a credential by its id")
    for sub in (init, issue, revoke):
        sub.add_argument(
            "--dir",
            type=Path,
            default=None,
            help="the credentials directory (default: tally up's, DATA_DIR/tls)",
        )
    init.add_argument(
        "--host",
        action="append",
        default=None,
        help="a DNS name or address the cluster's processes are reached at (repeat; default: "
        "localhost, 127.0.0.1, ::1)",
    )
    issue.add_argument("name", help="who it is for: a product, a person, a process")
    issue.add_argument(
        "--role",
        action="append",
        default=[],
        choices=[role.value for role in Role],
        help="repeat for several (one at least, but for --broker)",
    )
    issue.add_argument(
        "--broker",
        action="store_true",
        help="a certificate for the change stream's broker (NATS) or one of its clients (the "
        "relay, a reader): a name and no roles, since NATS authorises by name and refuses "
        "Tally's role extension (shards/local/embedded_nats.py)",
    )
    issue.add_argument(
        "--accounts",
        action="append",
        default=[],
        metavar="PATTERN",
        help="account patterns poster, reader, admin and monitor are limited to ('*': any text "
        "within a segment, '**': any; e.g. 'cust-*/loan-*', '@funding/loans'); repeat for several",
    )
    issue.add_argument("--token", action="store_true", help="a bearer token, not a certificate")
    issue.add_argument("--valid-days", type=int, default=0, help="default: 365, a token 30")
    issue.add_argument(
        "--host", action="append", default=[], help="for a server's certificate: its names"
    )
    issue.add_argument("--out", type=Path, default=None, help="where the certificate goes")
    revoke.add_argument("credential_id", metavar="ID", help="a certificate serial or a token jti")
    revoke.add_argument("--reason", default="", help="noted beside it")


def run(args: argparse.Namespace) -> int:
    root: Path = args.dir or local_directory()
    try:
        if args.credentials_action == "init":
            made = directory.init(root, tuple(args.host or directory.LOCAL_HOSTS))
            print(f"tally: credentials in {root}: {', '.join(made) or 'all kept'}")
            return 0
        if args.credentials_action == "revoke":
            directory.revoke(root, args.credential_id, args.reason)
            print(
                f"tally: revoked {args.credential_id} (servers reading {root / 'revoked'} "
                "refuse it within a second)"
            )
            return 0
        return _issue(args, root)
    except (OSError, CertificateError, ValueError) as error:
        print(f"tally credentials: {error}", file=sys.stderr)
        return 2


def _issue(args: argparse.Namespace, root: Path) -> int:
    if NAME.fullmatch(args.name) is None:
        print(
            f"tally credentials: the name {args.name!r} must be 1..64 characters of "
            "A-Z a-z 0-9 - _ . @, starting with a letter or digit (it names files)",
            file=sys.stderr,
        )
        return 2
    if args.broker and (args.role or args.accounts or args.token):
        print(
            "tally credentials: --broker is a certificate with a name only: no --role, "
            "--accounts or --token",
            file=sys.stderr,
        )
        return 2
    if not args.broker and not args.role:
        print("tally credentials: give --role (repeat for several), or --broker", file=sys.stderr)
        return 2
    roles = parse_roles(args.role)
    try:
        accounts = [check_pattern(pattern) for pattern in args.accounts]
    except ScopeError as error:
        print(f"tally credentials: {error}", file=sys.stderr)
        return 2
    if roles & SCOPED_ROLES and not accounts:
        print(
            "tally credentials: poster, reader, admin and monitor are scoped: give --accounts "
            "(--accounts '**' for every account)",
            file=sys.stderr,
        )
        return 2
    if args.valid_days < 0:
        print("tally credentials: --valid-days must be positive", file=sys.stderr)
        return 2
    if args.token:
        days = args.valid_days or 30
        token, jti = directory.issue_token(
            root, args.name, roles, accounts, datetime.timedelta(days=days)
        )
        print(f"tally: token {jti} for {args.name}, valid {days} days", file=sys.stderr)
        print(token)
        return 0
    days = args.valid_days or 365
    out = args.out or root / "issued" / args.name
    certificate, key, serial = directory.issue_certificate(
        root, args.name, roles, accounts, args.host, datetime.timedelta(days=days), out=out
    )
    print(
        f"tally: certificate {serial} for {args.name}, valid {days} days: {certificate}, "
        f"key {key} (0600)"
    )
    return 0
