"""Signing key files on this machine: `tally keygen` and the key `tally up` makes for itself.

A key pair is two PEM files: the private key, created 0600 (O_EXCL: an existing key is never
overwritten), and its public key beside it, which is what an auditor is given
(`tally audit --verify-key`). Neither leaves the machine; the database never holds either.
"""

from __future__ import annotations

import os
from pathlib import Path

from core import signing

# Under `tally up`'s data directory.
LOCAL_KEY_DIRECTORY = "keys"
LOCAL_PRIVATE_KEY = "journal-signing.key"


def public_path_of(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def write_key_pair(private_path: Path) -> tuple[Path, str]:
    """Make a new key pair at private_path (0600) and private_path + ".pub"; returns the
    public key's path and the key id. FileExistsError if the private key exists."""
    key = signing.generate()
    public_path = public_path_of(private_path)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(signing.private_pem(key))
    public_path.write_bytes(signing.public_pem(key.public_key()))
    return public_path, signing.key_id_of(key.public_key())


def local_key(data_dir: Path) -> tuple[Path, Path, str, bool]:
    """`tally up`'s key: (private path, public path, key id, made now), made when missing."""
    directory = data_dir / LOCAL_KEY_DIRECTORY
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = directory / LOCAL_PRIVATE_KEY
    if private_path.exists():
        public = signing.load_public(private_path.read_bytes(), str(private_path))
        public_path = public_path_of(private_path)
        if not public_path.exists():
            public_path.write_bytes(signing.public_pem(public.key))
        return private_path, public_path, public.key_id, False
    public_path, key_id = write_key_pair(private_path)
    return private_path, public_path, key_id, True
