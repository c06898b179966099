"""core.signing: a head's signature verifies for exactly the (shard, block, hash, key id) it was
made for, and nothing else; keys and published head lines round-trip and reject bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import signing

SIGNER = signing.Signer(signing.generate())
OTHER = signing.Signer(signing.generate())
VERIFIER = signing.Verifier(
    (
        signing.VerifyKey(SIGNER.key_id, SIGNER.public_key),
        signing.VerifyKey(OTHER.key_id, OTHER.public_key),
    )
)

heads = st.tuples(
    st.integers(0, 2**31 - 1), st.integers(1, 2**63 - 1), st.binary(min_size=32, max_size=32)
)


@settings(max_examples=200, deadline=None)
@given(head=heads, other=heads)
def test_a_signature_verifies_only_for_its_own_head(
    head: tuple[int, int, bytes], other: tuple[int, int, bytes]
) -> None:
    shard, block, hash_ = head
    signature = SIGNER.sign(shard, block, hash_)
    assert len(signature) == signing.SIGNATURE_LENGTH
    assert VERIFIER.problem(shard, block, hash_, SIGNER.key_id, signature) == ""
    # Moved to another head (another shard, block or hash): it fails.
    if other != head:
        problem = VERIFIER.problem(*other, SIGNER.key_id, signature)
        assert problem.startswith(f"signature does not verify with key {SIGNER.key_id}")
    # Claimed for another key the verifier knows: it fails.
    assert VERIFIER.problem(shard, block, hash_, OTHER.key_id, signature) != ""
    # A flipped bit anywhere in the signature: it fails.
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert VERIFIER.problem(shard, block, hash_, SIGNER.key_id, flipped) != ""


def test_keys_round_trip_through_pem_and_keep_their_id() -> None:
    key = signing.generate()
    loaded = signing.load_private(signing.private_pem(key), "key")
    public = signing.load_public(signing.public_pem(key.public_key()), "pub")
    assert signing.Signer(loaded).key_id == public.key_id == signing.key_id_of(key.public_key())
    assert len(public.key_id) == signing.KEY_ID_HEX_LENGTH
    # A private key given as a verify key stands for its public half.
    assert signing.load_public(signing.private_pem(key), "key").key_id == public.key_id
    with pytest.raises(signing.SigningKeyError, match=r"bad\.pem: not a PEM public key"):
        signing.load_public(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "bad.pem"
        )


def test_published_head_lines_round_trip_and_reject_bad_lines() -> None:
    head = signing.Head(2, 9, "ab" * 32, SIGNER.key_id, "cd" * 64)
    assert signing.parse_head_line(signing.head_line(head)) == head
    bad = {
        "[1]": "not a JSON object",
        '{"shard":-1,"block":1}': "shard and block must be integers",
        '{"shard":0,"block":true}': "shard and block must be integers",
        '{"shard":0,"block":1,"hash":"ab","key_id":"k","signature":"00"}': "64 hex digits",
        '{"shard":0,"block":1,"hash":1,"key_id":"k","signature":"00"}': "must be strings",
        "{": "not JSON",
    }
    for text, message in bad.items():
        with pytest.raises(ValueError, match=message):
            signing.parse_head_line(text)
