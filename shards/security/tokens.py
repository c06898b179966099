"""Bearer tokens: JSON Web Tokens (RFC 7519) signed with Ed25519 (EdDSA, RFC 8037).

A token carries what a client certificate carries (core.authority.grant_claims: roles and
account patterns) plus the standard claims: `iss` "tally", `aud` "tally.v1", `sub` (the
identity's name), `iat`, `nbf`, `exp` and `jti` (what a revocation names). Its header's `kid`
is the signing key's id (core.signing.key_id_of), so servers holding several public keys
(rotation) know which one to check it with. A client sends it as `authorization: Bearer
<token>` metadata, over TLS.

Why PyJWT: the JWT library most of the Python ecosystem uses (maintained since 2011, by the
jpadilla/pyjwt project; Flask and Django extensions and the major identity providers' Python
SDKs build on it), small, with one dependency we already have (`cryptography`, for EdDSA),
and strict where it matters: the accepted algorithms are given by the verifier, never taken
from the token (so "alg": "none" or an HMAC made with the public key is refused), and `exp`,
`nbf`, `aud` and `iss` are checked for us. joserfc and authlib carry the whole JOSE suite
(JWE, JWK sets, OAuth flows) that nothing here needs. Tokens rather than a home-grown format:
an identity provider a bank already runs can mint them, and tools everywhere can read them.
"""

from __future__ import annotations

import datetime
import secrets
import time
from collections.abc import Iterable
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core import signing
from core.authority import Identity, Role, grant_claims, identity_from_claims

ISSUER: Final = "tally"
AUDIENCE: Final = "tally.v1"
ALGORITHM: Final = "EdDSA"
# Small clock differences between the issuer and the servers are not an expiry.
LEEWAY_S: Final = 30
TOKEN_VALIDITY: Final = datetime.timedelta(days=30)


class TokenError(ValueError):
    """A token that does not authenticate anyone, with the reason (for the caller's answer)."""


def issue(
    key: Ed25519PrivateKey,
    subject: str,
    roles: Iterable[Role],
    accounts: Iterable[str],
    valid_for: datetime.timedelta = TOKEN_VALIDITY,
    now: float | None = None,
) -> tuple[str, str]:
    """A signed token for `subject` and its jti."""
    issued = int(time.time() if now is None else now)
    jti = secrets.token_hex(16)
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(valid_for.total_seconds()),
        "jti": jti,
        **grant_claims(roles, accounts),
    }
    key_id = signing.key_id_of(key.public_key())
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": key_id})
    return token, jti


class TokenVerifier:
    """Checks tokens against the public keys it was given (by key id)."""

    def __init__(self, keys: Iterable[signing.VerifyKey]) -> None:
        self._keys = {key.key_id: key.key for key in keys}

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def verify(self, token: str) -> tuple[Identity, float]:
        """The identity a token proves and when it expires (Unix seconds); TokenError if it is
        malformed, signed by no key we hold, expired, not yet valid, or not Tally's."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as error:
            raise TokenError(f"the bearer token is not a JWT: {error}") from None
        key_id = header.get("kid")
        key = self._keys.get(key_id) if isinstance(key_id, str) else None
        if key is None:
            raise TokenError(f"the bearer token's key {key_id!r} is not one this server trusts")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the bearer token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("the bearer token is not valid yet") from None
        except jwt.InvalidSignatureError:
            raise TokenError("the bearer token's signature does not verify") from None
        except jwt.InvalidTokenError as error:
            raise TokenError(f"the bearer token is invalid: {error}") from None
        subject, jti = claims["sub"], claims["jti"]
        if not isinstance(subject, str) or not isinstance(jti, str):
            raise TokenError("the bearer token's sub and jti must be strings")
        try:
            identity = identity_from_claims(subject, claims, "token", jti)
        except ValueError as error:
            raise TokenError(f"the bearer token's grant is malformed: {error}") from None
        return identity, float(claims["exp"])
