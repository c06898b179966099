"""core.dsn: a DSN's secrets leave reports, logs and answers, in the URL and the keyword form."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import dsn
from core.audit import redact

URL_CASES = [
    ("postgresql://u:s3cret@h:5432/db", "postgresql://u@h:5432/db"),
    ("postgres://u:s3cret@h/db", "postgres://u@h/db"),
    ("postgresql://:s3cret@h/db", "postgresql://h/db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("postgresql://h/db", "postgresql://h/db"),
    ("postgresql://u:s3%40cret@h/db", "postgresql://u@h/db"),
    ("postgresql://u:s3@cret@h/db", "postgresql://u@h/db"),
    ("postgresql://u:s3cret@h1:5432,h2:5433/db", "postgresql://u@h1:5432,h2:5433/db"),
    ("postgresql://u:s3cret@[::1]:5432/db", "postgresql://u@[::1]:5432/db"),
    ("postgresql://u:s3cret@h", "postgresql://u@h"),
    ("postgresql://u:s3?cret@h", "postgresql://u@h"),
    ("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db"),
    ("postgresql://u@h/db?sslmode=require&password=s3cret", "postgresql://u@h/db?sslmode=require"),
    (
        "postgresql://u@h/db?password=s3cret&sslmode=require&sslpassword=k3y",
        "postgresql://u@h/db?sslmode=require",
    ),
    ("postgresql://u@h/db?PASSWORD=s3cret", "postgresql://u@h/db"),
    ("postgresql://u@h?password=s3cret", "postgresql://u@h"),
    ("postgresql://u@h/db?application_name=a@b", "postgresql://u@h/db?application_name=a@b"),
]

KEYWORD_CASES = [
    ("host=h port=5432 user=u password=s3cret dbname=db", "host=h port=5432 user=u dbname=db"),
    ("host=h password=s3cret", "host=h"),
    ("password=s3cret host=h", "host=h"),
    ("host=h password = s3cret dbname=db", "host=h dbname=db"),
    ("host=h password='s3 cret' dbname=db", "host=h dbname=db"),
    ("host=h password='s3\\'cret' dbname=db", "host=h dbname=db"),
    ("host=h password='s3 cret", "host=h"),
    ("host=h sslpassword=k3y dbname=db", "host=h dbname=db"),
    ("host=h PASSWORD=s3cret", "host=h"),
    ("host=h user=password dbname=db", "host=h user=password dbname=db"),
    # libpq skips blanks after '=': the password here is "dbname=db", so it goes.
    ("host=h password= dbname=db", "host=h"),
]


@pytest.mark.parametrize(("given_dsn", "expected"), URL_CASES + KEYWORD_CASES)
def test_redact_removes_every_secret(given_dsn: str, expected: str) -> None:
    assert dsn.redact(given_dsn) == expected
    assert redact(given_dsn) == expected  # core.audit's name for it is the same function
    for secret in ("s3cret", "s3 cret", "k3y", "cret"):
        assert secret not in dsn.redact(given_dsn)


@pytest.mark.parametrize(
    ("given_dsn", "secrets"),
    [
        ("postgresql://u:s3%40cret@h/db", ["s3%40cret", "s3@cret"]),
        ("postgresql://u@h/db?password=a%20b", ["a%20b", "a b"]),
        ("host=h password='s3\\'cret'", ["'s3\\'cret'", "s3'cret"]),
        ("host=h password=plain", ["plain"]),
        ("postgresql://u@h/db", []),
        ("host=h user=u", []),
    ],
)
def test_secrets_of_lists_raw_and_decoded_values(given_dsn: str, secrets: list[str]) -> None:
    assert dsn.secrets_of(given_dsn) == secrets


def test_scrub_hides_known_secrets_and_dsn_shaped_ones() -> None:
    secret_dsn = "postgresql://postgres:Zx9-secret@127.0.0.1:5432/tally"
    text = f"connecting to {secret_dsn} failed: token Zx9-secret rejected"
    scrubbed = dsn.scrub(text, dsn.secrets_of(secret_dsn))
    assert "Zx9-secret" not in scrubbed
    assert "postgresql://postgres:***@127.0.0.1:5432/tally" in scrubbed
    # Not told about it: shaped like a DSN secret is enough.
    unknown = dsn.scrub("dsn=postgresql://a:b1@h/x and host=h password='p q' user=u")
    assert "b1" not in unknown and "p q" not in unknown
    assert "postgresql://a:***@h/x" in unknown and "user=u" in unknown
    assert dsn.scrub("nothing secret here") == "nothing secret here"


_PASSWORDS = st.text(
    alphabet=string.ascii_letters + string.digits + "-_.~!$*+;,", min_size=6, max_size=30
)


@given(password=_PASSWORDS, user=st.sampled_from(["postgres", "u", "tally_audit"]))
def test_no_generated_password_survives_redaction(password: str, user: str) -> None:
    password = "Zq" + password  # so that it is no part of the rest of the DSN
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    forms = [
        f"postgresql://{user}:{password}@127.0.0.1:5432/db",
        f"postgresql://{user}@127.0.0.1:5432/db?sslmode=disable&password={password}",
        f"host=127.0.0.1 port=5432 user={user} password={password} dbname=db",
        f"host=127.0.0.1 user={user} password='{quoted} x' dbname=db",
    ]
    for form in forms:
        assert password not in dsn.redact(form), form
        assert password not in dsn.scrub(f"error at {form}: boom", dsn.secrets_of(form))
        assert password not in dsn.scrub(f"error at {form}: boom")
