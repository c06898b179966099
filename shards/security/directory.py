"""A credentials directory: the cluster CA, the cluster's own certificate, an admin identity
and the token-signing key, as `tally credentials init` makes them and `tally up` keeps them
(in DATA_DIR/tls). Nothing in it leaves the machine; private keys are 0600.

    ca.pem, ca.key                 the cluster CA (ca.key issues every other credential)
    cluster.pem, cluster.key       role cluster, for the hosts given: nodes, gateways and the
                                   audit server prove themselves with it and call each other
    admin.pem, admin.key           roles admin, poster, reader, auditor over every account
                                   (`**`): what `tally` commands present by default
    token-signing.key, .key.pub    signs bearer tokens (`tally credentials issue --token`);
                                   servers trust the .pub (`--token-key`)
    revoked                        revoked credential ids, one a line (`--revoked`)
    issued.jsonl                   every credential issued: name, kind, id, roles, accounts,
                                   expiry (what to look up before revoking)
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from core import signing
from core.authority import Role
from shards.security import pki, tokens
from shards.security.credentials import ClientSecurity, ServerSecurity, write_private

CA: Final = "ca"
CLUSTER: Final = "cluster"
ADMIN: Final = "admin"
TOKEN_KEY: Final = "token-signing.key"
REVOKED: Final = "revoked"
ISSUED: Final = "issued.jsonl"
LOCAL_HOSTS: Final = ("localhost", "127.0.0.1", "::1")
ADMIN_ROLES: Final = frozenset({Role.ADMIN, Role.POSTER, Role.READER, Role.AUDITOR})


@dataclass(frozen=True)
class Paths:
    """Where the pieces of a credentials directory are."""

    root: Path

    def certificate(self, name: str) -> Path:
        return self.root / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"

    @property
    def token_key(self) -> Path:
        return self.root / TOKEN_KEY

    @property
    def token_public_key(self) -> Path:
        return self.root / f"{TOKEN_KEY}.pub"

    @property
    def revoked(self) -> Path:
        return self.root / REVOKED

    @property
    def issued(self) -> Path:
        return self.root / ISSUED


def _write_pair(paths: Paths, name: str, certificate: bytes, key: bytes) -> None:
    write_private(paths.key(name), key)
    paths.certificate(name).write_bytes(certificate)


def init(root: Path, hosts: Sequence[str] = LOCAL_HOSTS) -> list[str]:
    """Make whatever of the directory is missing (an existing CA and keys are kept); returns
    the names of what was made."""
    paths = Paths(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    made = []
    if not paths.certificate(CA).exists():
        authority = pki.Authority.create()
        certificate = pki.certificate_pem(authority.certificate)
        _write_pair(paths, CA, certificate, pki.key_pem(authority.key))
        made.append("ca")
    if not paths.certificate(CLUSTER).exists():
        issue_certificate(root, "tally-cluster", {Role.CLUSTER}, (), hosts, out=root, file=CLUSTER)
        made.append("cluster")
    if not paths.certificate(ADMIN).exists():
        issue_certificate(root, "admin", ADMIN_ROLES, ("**",), (), out=root, file=ADMIN)
        made.append("admin")
    if not paths.token_key.exists():
        key = signing.generate()
        write_private(paths.token_key, signing.private_pem(key))
        paths.token_public_key.write_bytes(signing.public_pem(key.public_key()))
        made.append("token key")
    if not paths.revoked.exists():
        paths.revoked.write_text("# revoked credential ids, one a line: tally credentials revoke\n")
    return made


def load_authority(root: Path) -> pki.Authority:
    paths = Paths(root)
    try:
        certificate = paths.certificate(CA).read_bytes()
        key = paths.key(CA).read_bytes()
    except OSError as error:
        raise pki.CertificateError(f"the CA of {root}: {error.strerror or error}") from None
    return pki.Authority.load(certificate, key, str(paths.key(CA)))


def _note_issued(root: Path, entry: dict[str, object]) -> None:
    with Paths(root).issued.open("a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def issue_certificate(
    root: Path,
    name: str,
    roles: Iterable[Role],
    accounts: Iterable[str],
    hosts: Sequence[str] = (),
    valid_for: datetime.timedelta = pki.LEAF_VALIDITY,
    out: Path | None = None,
    file: str = "",
) -> tuple[Path, Path, str]:
    """A certificate and key for `name` in `out` (default: the directory): their paths and the
    certificate's serial (what `revoke` takes)."""
    roles, accounts = frozenset(roles), tuple(accounts)
    certificate, key = load_authority(root).issue(name, roles, accounts, hosts, valid_for)
    target = Paths(out or root)
    stem = file or name
    _write_pair(target, stem, pki.certificate_pem(certificate), pki.key_pem(key))
    serial = pki.serial_hex(certificate)
    _note_issued(
        root,
        {
            "name": name,
            "kind": "certificate",
            "id": serial,
            "roles": sorted(role.value for role in roles),
            "accounts": list(accounts),
            "hosts": list(hosts),
            "expires": certificate.not_valid_after_utc.isoformat(),
        },
    )
    return target.certificate(stem), target.key(stem), serial


def issue_token(
    root: Path,
    name: str,
    roles: Iterable[Role],
    accounts: Iterable[str],
    valid_for: datetime.timedelta = tokens.TOKEN_VALIDITY,
) -> tuple[str, str]:
    """A bearer token for `name`, signed with the directory's token key, and its jti."""
    paths = Paths(root)
    key = signing.load_private(paths.token_key.read_bytes(), str(paths.token_key))
    roles, accounts = frozenset(roles), tuple(accounts)
    token, jti = tokens.issue(key, name, roles, accounts, valid_for)
    expires = datetime.datetime.now(datetime.UTC) + valid_for
    _note_issued(
        root,
        {
            "name": name,
            "kind": "token",
            "id": jti,
            "roles": sorted(role.value for role in roles),
            "accounts": list(accounts),
            "expires": expires.isoformat(),
        },
    )
    return token, jti


def revoke(root: Path, credential_id: str, reason: str = "") -> None:
    """Servers given this directory's `revoked` file refuse the credential within a second."""
    entry = credential_id.strip().lower()
    if not entry or any(c.isspace() or c == "#" for c in entry):
        raise ValueError(f"{credential_id!r} is not a credential id")
    comment = f"  # {reason}" if reason else ""
    with Paths(root).revoked.open("a") as handle:
        handle.write(f"{entry}{comment}\n")


def server_security(root: Path, client_auth: str = "certificate") -> ServerSecurity:
    """The cluster certificate of the directory, its CA, token key and revocations."""
    paths = Paths(root)
    return ServerSecurity.from_files(
        str(paths.certificate(CLUSTER)),
        str(paths.key(CLUSTER)),
        str(paths.certificate(CA)),
        client_auth,
        [str(paths.token_public_key)] if paths.token_public_key.exists() else [],
        str(paths.revoked),
    )


def server_flags(root: Path) -> list[str]:
    """The flags that give a `tally node`, `gateway` or `audit-serve` this directory's server
    credentials (paths only: no secret travels on a command line)."""
    paths = Paths(root)
    return [
        f"--tls-cert={paths.certificate(CLUSTER)}",
        f"--tls-key={paths.key(CLUSTER)}",
        f"--tls-ca={paths.certificate(CA)}",
        f"--token-key={paths.token_public_key}",
        f"--revoked={paths.revoked}",
    ]


def client_security(root: Path, name: str = ADMIN) -> ClientSecurity:
    paths = Paths(root)
    return ClientSecurity.from_files(
        str(paths.certificate(CA)), str(paths.certificate(name)), str(paths.key(name))
    )
