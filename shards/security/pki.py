"""The cluster's certificate authority: X.509 certificates for servers, cluster processes and
clients, made and read with `cryptography` (pyca, the library core/signing.py says why of).

Keys are ECDSA P-256: every TLS stack (gRPC's BoringSSL included) speaks it in TLS 1.2 and 1.3,
and a key and a signature are small. A certificate may serve as a server's (SANs for the names
and addresses it is reached at) and as a client's at once (extended key usage for both): a
node's certificate proves the node to its clients and, on the internal listener, to its peers.

What a caller may do travels in the certificate, signed by the CA: a non-critical extension
(OID `2.25.<uuid>`, ITU-T X.667's arc for an OID without registration) whose value is a DER
UTF8String of JSON, `{"roles": [...], "accounts": [...]}` (core.authority.grant_claims). The
subject's common name is the identity's name; its serial number is what a revocation names.
A certificate of the CA without the extension proves who the caller is and grants nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.authority import Identity, Role, grant_claims, identity_from_claims

GRANT_OID: Final = x509.ObjectIdentifier("2.25.293794240947927280325838312655499361814")
_UTF8STRING_TAG: Final = 0x0C
CA_VALIDITY: Final = datetime.timedelta(days=3650)
LEAF_VALIDITY: Final = datetime.timedelta(days=365)
# Certificates are valid from a little before they are made: clocks of machines differ.
_BACKDATE: Final = datetime.timedelta(minutes=5)


class CertificateError(ValueError):
    """A certificate or key that cannot be used, with the reason."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _der_utf8(text: str) -> bytes:
    body = text.encode()
    length = len(body)
    if length < 0x80:
        header = bytes([length])
    else:
        digits = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([0x80 | len(digits)]) + digits
    return bytes([_UTF8STRING_TAG]) + header + body


def _from_der_utf8(value: bytes) -> str:
    if len(value) < 2 or value[0] != _UTF8STRING_TAG:
        raise CertificateError("the grant extension is not a UTF8String")
    first = value[1]
    if first < 0x80:
        start, length = 2, first
    else:
        count = first & 0x7F
        start, length = 2 + count, int.from_bytes(value[2 : 2 + count], "big")
    body = value[start : start + length]
    if len(body) != length or start + length != len(value):
        raise CertificateError("the grant extension's length is wrong")
    return body.decode()


@dataclass(frozen=True)
class Authority:
    """The CA: its certificate and private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "Tally cluster CA") -> Authority:
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(cls, certificate_pem_bytes: bytes, key_pem_bytes: bytes, where: str) -> Authority:
        certificate = load_certificate(certificate_pem_bytes, where)
        try:
            key = serialization.load_pem_private_key(key_pem_bytes, password=None)
        except (ValueError, TypeError) as error:
            raise CertificateError(f"{where}: not an unencrypted PEM key ({error})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{where}: the CA key is not an ECDSA key")
        return cls(certificate, key)

    def issue(
        self,
        name: str,
        roles: Iterable[Role] = (),
        accounts: Iterable[str] = (),
        hosts: Sequence[str] = (),
        valid_for: datetime.timedelta = LEAF_VALIDITY,
        key: ec.EllipticCurvePrivateKey | None = None,
        not_before: datetime.datetime | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A certificate for `name` granting `roles` over `accounts`, usable as a server's for
        `hosts` (DNS names or IP addresses) and as a client's; and its key."""
        key = key or new_key()
        start = not_before or _now() - _BACKDATE
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(host) for host in hosts]),
                critical=False,
            )
        claims = grant_claims(roles, accounts)
        if claims["roles"]:
            value = _der_utf8(json.dumps(claims, separators=(",", ":"), sort_keys=True))
            builder = builder.add_extension(
                x509.UnrecognizedExtension(GRANT_OID, value), critical=False
            )
        return builder.sign(self.key, hashes.SHA256()), key


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def load_certificate(data: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise CertificateError(f"{where}: not a PEM certificate ({error})") from None


def serial_hex(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode()


def identity_of(certificate: x509.Certificate) -> Identity:
    """The identity a (TLS-verified) certificate proves: its name and its grant extension."""
    name = common_name(certificate)
    try:
        extension = certificate.extensions.get_extension_for_oid(GRANT_OID)
    except x509.ExtensionNotFound:
        return Identity(name, frozenset(), (), "certificate", serial_hex(certificate))
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise CertificateError("the grant extension is not Tally's")
    try:
        claims = json.loads(_from_der_utf8(value.value))
        if not isinstance(claims, dict):
            raise ValueError("the grant is not an object")
        return identity_from_claims(name, claims, "certificate", serial_hex(certificate))
    except (ValueError, UnicodeDecodeError) as error:
        raise CertificateError(f"the certificate's grant is malformed: {error}") from None
