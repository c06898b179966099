"""What the client presents: the CA bundle it checks servers against, and a client
certificate and key (mutual TLS) or a bearer token, as `tally credentials issue` makes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Credentials:
    ca: bytes
    certificate: bytes = b""
    key: bytes = b""
    token: str = ""

    def __post_init__(self) -> None:
        if not self.ca:
            raise ValueError("credentials need the CA bundle that servers are checked against")
        if bool(self.certificate) != bool(self.key):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        if not self.certificate and not self.token:
            raise ValueError("credentials need a client certificate and key, or a token")

    @classmethod
    def from_files(
        cls,
        ca: str | Path,
        certificate: str | Path = "",
        key: str | Path = "",
        token: str | Path = "",
    ) -> Credentials:
        return cls(
            Path(ca).read_bytes(),
            Path(certificate).read_bytes() if certificate else b"",
            Path(key).read_bytes() if key else b"",
            Path(token).read_text().strip() if token else "",
        )

    @classmethod
    def from_directory(cls, directory: str | Path, identity: str = "admin") -> Credentials:
        """From a credentials directory as `tally credentials init` and `tally up` make it
        (ca.pem, IDENTITY.pem, IDENTITY.key)."""
        root = Path(directory)
        return cls.from_files(root / "ca.pem", root / f"{identity}.pem", root / f"{identity}.key")

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
