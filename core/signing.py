"""Signed journal heads: the writer's Ed25519 signature over each block's head.

The hash chain (core.journal) proves that the rows are those the hashes were made from, but it
is unkeyed: whoever can write to a shard database can rewrite a suffix of the chain with
recomputed hashes. A signature made with a key that is not in the database closes that gap:
rewriting a block needs the private key, which only the writer's key file holds.

What is signed is the head message of a block: a fixed prefix (domain separation), the shard,
the block's sequence, its hash (which covers the previous block's hash, so the whole chain
before it) and the key id. Binding all four means a signature cannot be moved to another block,
another shard, or claimed for another key. The key id is the first 16 hex digits of the SHA-256
of the raw 32-byte public key, so an auditor holding several public keys (rotation) knows which
one to check a head with.

Ed25519 through `cryptography` (pyca): the Python Cryptographic Authority's library, maintained
for over a decade, wrapping OpenSSL's audited Ed25519; it is what pip itself and most of the
Python ecosystem rely on for TLS and signatures. Hand-rolled or pure-Python Ed25519 would be
slower (a signature per block is on the commit path) and unreviewed. Keys are PEM files: PKCS#8
for the private key and SubjectPublicKeyInfo for the public key, the forms `openssl genpkey
-algorithm ed25519` and `openssl pkey -pubout` read and write.

This module is pure: it turns bytes into keys, signatures and head lines. Reading key files,
writing them 0600 and appending published heads happen in shards/ (the node and `tally up`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HEAD_PREFIX: Final = "tally-journal-head/1"
KEY_ID_HEX_LENGTH: Final = 16
SIGNATURE_LENGTH: Final = 64


class SigningKeyError(ValueError):
    """A key file that is not an Ed25519 key in PEM form."""


def head_message(shard: int, sequence: int, hash_: bytes, key_id: str) -> bytes:
    """What a block's signature covers (core/audit/export.py builds the same bytes)."""
    return f"{HEAD_PREFIX}|{shard}|{sequence}|{hash_.hex()}|{key_id}".encode()


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_LENGTH]


class Signer:
    """The writer's private key: signs block heads."""

    __slots__ = ("_key", "key_id", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def sign(self, shard: int, sequence: int, hash_: bytes) -> bytes:
        return self._key.sign(head_message(shard, sequence, hash_, self.key_id))


@dataclass(frozen=True, slots=True)
class VerifyKey:
    key_id: str
    key: Ed25519PublicKey


class Verifier:
    """Public keys by key id (several: keys rotate, old blocks keep their key's signatures)."""

    def __init__(self, keys: tuple[VerifyKey, ...]) -> None:
        self.keys = {key.key_id: key.key for key in keys}

    def problem(
        self, shard: int, sequence: int, hash_: bytes, key_id: str, signature: bytes
    ) -> str:
        """What is wrong with a signed head ("" when its signature verifies)."""
        key = self.keys.get(key_id)
        if key is None:
            known = ", ".join(sorted(self.keys)) or "none"
            return f"signed by key {key_id or '(none)'}, which is not a verify key ({known})"
        try:
            key.verify(signature, head_message(shard, sequence, hash_, key_id))
        except InvalidSignature:
            return (
                f"signature does not verify with key {key_id} for shard {shard}, block "
                f"{sequence}, hash {hash_.hex()}"
            )
        return ""


# ---- keys: PEM bytes in and out ----


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private(data: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(f"{where}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{where}: not an Ed25519 private key")
    return key


def load_public(data: bytes, where: str) -> VerifyKey:
    """A public key PEM, or a private key PEM (its public half)."""
    if b"PRIVATE KEY" in data:
        public = load_private(data, where).public_key()
    else:
        try:
            loaded = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as error:
            raise SigningKeyError(f"{where}: not a PEM public key ({error})") from None
        if not isinstance(loaded, Ed25519PublicKey):
            raise SigningKeyError(f"{where}: not an Ed25519 public key")
        public = loaded
    return VerifyKey(key_id_of(public), public)


# ---- published heads: one JSON line per signed head ----


@dataclass(frozen=True, slots=True)
class Head:
    shard: int
    block: int
    hash_hex: str
    key_id: str
    signature_hex: str


def head_line(head: Head) -> str:
    fields = {
        "shard": head.shard,
        "block": head.block,
        "hash": head.hash_hex,
        "key_id": head.key_id,
        "signature": head.signature_hex,
    }
    return json.dumps(fields, separators=(",", ":")) + "\n"


def parse_head_line(text: str) -> Head:
    """One published head; ValueError naming what is wrong."""
    try:
        loaded: Any = json.loads(text)
    except ValueError as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(loaded, dict):
        raise ValueError("not a JSON object")
    shard, block = loaded.get("shard"), loaded.get("block")
    if type(shard) is not int or type(block) is not int or shard < 0 or block < 1:
        raise ValueError("shard and block must be integers (shard >= 0, block >= 1)")
    texts = [loaded.get(name) for name in ("hash", "key_id", "signature")]
    if not all(isinstance(value, str) for value in texts):
        raise ValueError("hash, key_id and signature must be strings")
    hash_hex, key_id, signature_hex = (str(value) for value in texts)
    try:
        if len(bytes.fromhex(hash_hex)) != 32:
            raise ValueError
        bytes.fromhex(signature_hex)
    except ValueError:
        raise ValueError("hash must be 64 hex digits and signature hexadecimal") from None
    return Head(shard, block, hash_hex.lower(), key_id, signature_hex.lower())
