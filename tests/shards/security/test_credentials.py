"""`tally credentials` and the credentials it makes: certificates carrying their grant, bearer
tokens, revocations, and a directory whose keys only their owner can read."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

from core import signing
from core.authority import Role
from shards.cli.main import main
from shards.security import directory, pki
from shards.security.credentials import Revocations
from shards.security.tokens import TokenError, TokenVerifier


def tally(*arguments: str) -> int:
    return main(["credentials", "--log-level", "ERROR", *arguments])


def test_init_makes_a_private_directory_and_keeps_it(tmp_path: Path) -> None:
    root = tmp_path / "tls"
    assert tally("init", "--dir", str(root), "--host", "node-0.tally", "--host", "10.0.0.7") == 0
    for key in ("ca.key", "cluster.key", "admin.key", "token-signing.key"):
        assert stat.S_IMODE((root / key).stat().st_mode) == 0o600, key
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    ca_before = (root / "ca.pem").read_bytes()
    cluster = pki.load_certificate((root / "cluster.pem").read_bytes(), "cluster")
    names = cluster.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node-0.tally" in names.get_values_for_type(x509.DNSName)
    assert pki.identity_of(cluster).roles == {Role.CLUSTER}
    admin = pki.identity_of(pki.load_certificate((root / "admin.pem").read_bytes(), "admin"))
    assert admin.roles == {Role.ADMIN, Role.POSTER, Role.READER, Role.AUDITOR}
    assert admin.accounts == ("**",)
    assert tally("init", "--dir", str(root)) == 0
    assert (root / "ca.pem").read_bytes() == ca_before


def test_issue_a_scoped_certificate_and_revoke_it(tmp_path: Path) -> None:
    root = tmp_path / "tls"
    directory.init(root)
    out = tmp_path / "loans"
    code = tally(
        "issue", "loans", "--role", "poster", "--role", "reader",
        "--accounts", "cust-*/loan-*", "--accounts", "@funding/loans",
        "--dir", str(root), "--out", str(out), "--valid-days", "7",
    )  # fmt: skip
    assert code == 0
    certificate = pki.load_certificate((out / "loans.pem").read_bytes(), "loans")
    identity = pki.identity_of(certificate)
    assert identity.subject == "loans"
    assert identity.roles == {Role.POSTER, Role.READER}
    assert identity.accounts == ("cust-*/loan-*", "@funding/loans")
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 7 * 86400 <= lifetime.total_seconds() <= 7 * 86400 + 600
    assert stat.S_IMODE((out / "loans.key").stat().st_mode) == 0o600
    issued = [json.loads(line) for line in (root / "issued.jsonl").read_text().splitlines()]
    entry = next(e for e in issued if e["name"] == "loans")
    assert entry["id"] == identity.credential_id and entry["kind"] == "certificate"
    revocations = Revocations(root / "revoked")
    assert not revocations.is_revoked(identity.credential_id)
    assert tally("revoke", identity.credential_id, "--reason", "left", "--dir", str(root)) == 0
    assert Revocations(root / "revoked").is_revoked(identity.credential_id)
    # Never overwritten: a second certificate of the same name into the same place is refused.
    assert tally("issue", "loans", "--role", "auditor", "--dir", str(root), "--out", str(out)) == 2


def test_scoped_roles_need_accounts_and_roles_must_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tls"
    directory.init(root)
    assert tally("issue", "p", "--role", "poster", "--dir", str(root)) == 2
    assert "--accounts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tally("issue", "p", "--role", "root", "--dir", str(root))
    code = tally("issue", "p", "--role", "reader", "--accounts", "a b", "--dir", str(root))
    assert code == 2
    assert "account pattern" in capsys.readouterr().err
    assert tally("issue", "../escape", "--role", "auditor", "--dir", str(root)) == 2
    assert "names files" in capsys.readouterr().err


def test_a_broker_certificate_has_a_name_and_no_roles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The change stream's broker (NATS) authorises by name and its Go x509 parser refuses the
    grant extension: --broker issues a certificate without it."""
    root = tmp_path / "tls"
    directory.init(root)
    out = tmp_path / "relay"
    assert tally("issue", "tally-relay", "--broker", "--dir", str(root), "--out", str(out)) == 0
    certificate = pki.load_certificate((out / "tally-relay.pem").read_bytes(), "relay")
    assert pki.common_name(certificate) == "tally-relay"
    oids = {extension.oid for extension in certificate.extensions}
    assert pki.GRANT_OID not in oids
    assert tally("issue", "x", "--broker", "--role", "auditor", "--dir", str(root)) == 2
    assert "name only" in capsys.readouterr().err
    assert tally("issue", "x", "--dir", str(root)) == 2
    assert "--role" in capsys.readouterr().err


def test_issue_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "tls"
    directory.init(root)
    capsys.readouterr()
    code = tally(
        "issue", "reports", "--role", "reader", "--accounts", "cust-*/*", "--token",
        "--valid-days", "2", "--dir", str(root),
    )  # fmt: skip
    assert code == 0
    token = capsys.readouterr().out.strip()
    public = signing.load_public((root / "token-signing.key.pub").read_bytes(), "pub")
    identity, expires = TokenVerifier([public]).verify(token)
    assert 1.9 * 86400 < expires - time.time() <= 2 * 86400
    assert identity.subject == "reports" and identity.roles == {Role.READER}
    assert identity.accounts == ("cust-*/*",) and identity.via == "token"
    other = signing.load_public(signing.private_pem(signing.generate()), "other")
    with pytest.raises(TokenError, match="not one this server trusts"):
        TokenVerifier([other]).verify(token)


def test_a_malformed_grant_is_refused() -> None:
    authority = pki.Authority.create()
    certificate, _ = authority.issue("x", {Role.READER}, ("**",))
    assert pki.identity_of(certificate).roles == {Role.READER}
    bare, _ = authority.issue("bare")
    assert pki.identity_of(bare).roles == frozenset()
    broken = (
        x509.CertificateBuilder()
        .subject_name(bare.subject)
        .issuer_name(authority.certificate.subject)
        .public_key(pki.new_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(bare.not_valid_before_utc)
        .not_valid_after(bare.not_valid_after_utc)
        .add_extension(x509.UnrecognizedExtension(pki.GRANT_OID, b'\x0c\x05{"ro'), False)
        .sign(authority.key, pki.hashes.SHA256())
    )
    with pytest.raises(pki.CertificateError):
        pki.identity_of(broken)
