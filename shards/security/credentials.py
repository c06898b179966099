"""What a server is given to prove itself and check its callers (ServerSecurity), what a caller
presents (ClientSecurity), the channels a caller opens with it, and the revocation list.

Every listener is TLS. A client listener authenticates callers one of two ways, chosen by the
operator (`--client-auth`): `certificate` (mutual TLS: every caller presents a certificate of
the cluster CA, which carries its grant) or `token` (TLS, and every call carries a bearer token
signed by a key the server trusts). Not both on one port: gRPC's Python server either requires
a client certificate or never asks for one (grpc.ssl_server_credentials has no "ask, but go on
without"), and a token listener that asked would make every token client present a certificate
anyway. The internal listener always requires a cluster certificate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

from core import signing
from shards.security import pki

CLIENT_AUTH_MODES: Final = ("certificate", "token")
REVOCATION_CHECK_INTERVAL_S: Final = 1.0


class SecurityConfigError(ValueError):
    """Credentials that cannot be used as given, with what is wrong and where."""


def _read(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise SecurityConfigError(f"{what} {path}: {error.strerror or error}") from None


class Revocations:
    """The credential ids (certificate serials in hex, token jtis) an operator has revoked:
    one a line in a file (text after '#' is a comment), re-read when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._ids: frozenset[str] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._ids, self._stamp = frozenset(), None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        ids = set()
        for line in self.path.read_text().splitlines():
            entry = line.split("#", 1)[0].strip().lower()
            if entry:
                ids.add(entry)
        self._ids, self._stamp = frozenset(ids), stamp

    def is_revoked(self, credential_id: str) -> bool:
        now = time.monotonic()
        if self.path is not None and now - self._checked_at >= REVOCATION_CHECK_INTERVAL_S:
            self._checked_at = now
            try:
                self._load()
            except OSError:  # a file being rewritten: keep the list we have
                pass
        return credential_id.lower() in self._ids


@dataclass(frozen=True)
class ServerSecurity:
    """A server's certificate chain and key (PEM), the CA bundle it trusts for client and peer
    certificates, how its client listener authenticates, and the token keys it trusts."""

    certificate: bytes
    key: bytes
    ca: bytes
    client_auth: str = "certificate"
    token_keys: tuple[signing.VerifyKey, ...] = ()
    revoked: Path | None = None
    _revocations: list[Revocations] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.client_auth not in CLIENT_AUTH_MODES:
            raise SecurityConfigError(
                f"client authentication {self.client_auth!r} is not one of "
                f"{', '.join(CLIENT_AUTH_MODES)}"
            )
        if self.client_auth == "token" and not self.token_keys:
            raise SecurityConfigError("--client-auth token needs at least one --token-key")

    @classmethod
    def from_files(
        cls,
        certificate: str,
        key: str,
        ca: str,
        client_auth: str = "certificate",
        token_keys: Sequence[str] = (),
        revoked: str = "",
    ) -> ServerSecurity:
        missing = [
            flag
            for flag, value in (("--tls-cert", certificate), ("--tls-key", key), ("--tls-ca", ca))
            if not value
        ]
        if missing:
            raise SecurityConfigError(
                f"every listener is TLS: give {', '.join(missing)} (or TALLY_TLS_CERT, "
                "TALLY_TLS_KEY, TALLY_TLS_CA; tally up makes them for itself)"
            )
        chain = _read(certificate, "TLS certificate")
        pki.load_certificate(chain, certificate)
        ca_bundle = _read(ca, "CA bundle")
        pki.load_certificate(ca_bundle, ca)
        keys = []
        for path in token_keys:
            try:
                keys.append(signing.load_public(_read(path, "token key"), path))
            except signing.SigningKeyError as error:
                raise SecurityConfigError(str(error)) from None
        return cls(
            chain,
            _read(key, "TLS key"),
            ca_bundle,
            client_auth,
            tuple(keys),
            Path(revoked) if revoked else None,
        )

    def server_credentials(self, require_certificate: bool) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.certificate)],
            root_certificates=self.ca,
            require_client_auth=require_certificate,
        )

    def revocations(self) -> Revocations:
        """One list per server, shared by its listeners."""
        if not self._revocations:
            self._revocations.append(Revocations(self.revoked))
        return self._revocations[0]

    def as_client(self) -> ClientSecurity:
        """This server's certificate as a caller's (a gateway or node calling a node's
        internal listener)."""
        return ClientSecurity(self.ca, self.certificate, self.key)


@dataclass(frozen=True)
class ClientSecurity:
    """What a caller presents: the CA bundle it checks servers against, and a certificate and
    key (mutual TLS) or a bearer token, or both."""

    ca: bytes
    certificate: bytes = b""
    key: bytes = b""
    token: str = ""

    @classmethod
    def from_files(
        cls, ca: str, certificate: str = "", key: str = "", token: str = ""
    ) -> ClientSecurity:
        if not ca:
            raise SecurityConfigError("give the CA bundle servers are checked against (--ca)")
        if bool(certificate) != bool(key):
            raise SecurityConfigError("a client certificate needs its key, and a key its cert")
        return cls(
            _read(ca, "CA bundle"),
            _read(certificate, "client certificate") if certificate else b"",
            _read(key, "client key") if key else b"",
            _read(token, "token").decode().strip() if token else "",
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        transport = grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.key or None,
            certificate_chain=self.certificate or None,
        )
        if not self.token:
            return transport
        return grpc.composite_channel_credentials(
            transport, grpc.access_token_call_credentials(self.token)
        )


def aio_channel(
    target: str, security: ClientSecurity, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(target, security.channel_credentials(), options=list(options))


def channel(
    target: str, security: ClientSecurity, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    return grpc.secure_channel(target, security.channel_credentials(), options=list(options))


def write_private(path: Path, data: bytes) -> None:
    """A new file readable by its owner alone (never overwriting one)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
