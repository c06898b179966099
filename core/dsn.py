"""DSN secrets, kept out of reports, logs, RPC answers and process lists.

A PostgreSQL DSN comes in two forms (libpq's, which asyncpg and every tool take):

* URL: ``postgresql://user:password@host:port/db?password=...&sslpassword=...``;
* keywords: ``host=h port=5432 user=u password=secret`` (a value may be single-quoted, with
  backslash escapes: ``password='a b\\'c'``).

`redact` removes every secret from one DSN (the password in the user part, and the
``password`` and ``sslpassword`` parameters, in either form); `secrets_of` lists the secret
values of a DSN (as written and decoded), so that `scrub` can take them out of any text, say an
error message or a log line that quotes the DSN or a part of it. `scrub` also removes anything
shaped like a DSN secret that it was not told about. When in doubt, more is removed, never less.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from typing import Final

__all__ = ["HIDDEN", "SECRET_KEYS", "join_list", "redact", "scrub", "secrets_of", "split_list"]

HIDDEN: Final = "***"
SECRET_KEYS: Final = frozenset({"password", "sslpassword"})

_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# A keyword value: single-quoted with backslash escapes (an unterminated quote runs to the end,
# as libpq would read it), or bare up to the next whitespace.
_VALUE: Final = r"(?:'(?:[^'\\]|\\.)*(?:'|\\?$)|\S*)"
_KEYWORD_SECRET: Final = re.compile(
    r"(?:^|(?<=\s))(?P<key>sslpassword|password)\s*=\s*(?P<value>" + _VALUE + r")\s*",
    re.IGNORECASE | re.DOTALL,
)
_QUERY_SECRET: Final = re.compile(r"(?P<lead>[?&])(?:sslpassword|password)=[^&#]*", re.IGNORECASE)
# In free text: credentials in a URL's user part, and key=value secrets (quoted or not).
_TEXT_URL_CREDENTIALS: Final = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):[^@\s]*@"
)
_TEXT_SECRET_VALUE: Final = re.compile(
    r"(?P<key>(?<![A-Za-z0-9_])(?:sslpassword|password))(?P<sep>\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|\"[^\"]*\"?|[^\s&]+)",
    re.IGNORECASE,
)


def _split_url(dsn: str) -> tuple[str, str, str] | None:
    """(scheme, authority, tail) of a URL-form DSN (tail starts at its first '/' or '?'), or
    None for the keyword form. The authority runs to the first '/' so that a user part
    holding a stray '?' or '#' is still all credentials."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return None
    slash = rest.find("/")
    if slash < 0:
        # No path: the authority ends at the query, unless the '?' comes before a credentials '@'.
        question = rest.find("?")
        at = rest.rfind("@")
        end = question if question >= 0 and question > at else len(rest)
        return scheme, rest[:end], rest[end:]
    return scheme, rest[:slash], rest[slash:]


def redact(dsn: str) -> str:
    """The DSN without its secrets, for reports, logs and answers: a URL keeps its user and
    loses the password after it and its ``password``/``sslpassword`` parameters; the keyword
    form loses its ``password`` and ``sslpassword`` pairs."""
    parts = _split_url(dsn)
    if parts is None:
        return _KEYWORD_SECRET.sub("", dsn).strip()
    scheme, authority, tail = parts
    if "@" in authority:
        credentials, _, hosts = authority.rpartition("@")
        user = credentials.split(":", 1)[0]
        authority = f"{user}@{hosts}" if user else hosts
    path, question, query = tail.partition("?")
    if question:
        query = _QUERY_SECRET.sub(r"\g<lead>", "?" + query)[1:]
        query = "&".join(part for part in query.split("&") if part)
        tail = f"{path}?{query}" if query else path
    return f"{scheme}://{authority}{tail}"


def _unquote_keyword_value(value: str) -> str:
    if value.startswith("'"):
        inner = value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:]
        return re.sub(r"\\(.)", r"\1", inner)
    return value


def secrets_of(dsn: str) -> list[str]:
    """Every secret value of the DSN, as written and as decoded (empty ones left out)."""
    found: list[str] = []
    parts = _split_url(dsn)
    if parts is None:
        for match in _KEYWORD_SECRET.finditer(dsn):
            raw = match.group("value")
            found += [raw, _unquote_keyword_value(raw)]
    else:
        _, authority, tail = parts
        credentials = authority.rpartition("@")[0]
        if ":" in credentials:
            raw = credentials.split(":", 1)[1]
            found += [raw, urllib.parse.unquote(raw)]
        for match in re.finditer(r"[?&](?:sslpassword|password)=([^&#]*)", tail, re.IGNORECASE):
            raw = match.group(1)
            found += [raw, urllib.parse.unquote_plus(raw)]
    unique: list[str] = []
    for secret in found:
        if secret and secret not in unique:
            unique.append(secret)
    return unique


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """The text with every given secret replaced by ***, and anything shaped like a DSN secret
    (a URL's ``user:password@``, ``password=...``) removed too."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, HIDDEN)
    text = _TEXT_URL_CREDENTIALS.sub(r"\g<head>:" + HIDDEN + "@", text)
    return _TEXT_SECRET_VALUE.sub(lambda m: m.group("key") + m.group("sep") + HIDDEN, text)


def join_list(dsns: Iterable[str]) -> str:
    """Several DSNs as one value (an environment variable's): comma-separated, or one per line
    when one of them holds a comma (a DSN naming several hosts: `h1:5432,h2:5432`)."""
    dsns = list(dsns)
    if any("\n" in dsn for dsn in dsns):
        raise ValueError("a DSN may not hold a line break")
    return ("\n" if any("," in dsn for dsn in dsns) else ",").join(dsns)


def split_list(text: str) -> list[str]:
    """The DSNs of join_list's value: one per line if it has several lines, else comma-separated."""
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    return [part.strip() for part in parts if part.strip()]
