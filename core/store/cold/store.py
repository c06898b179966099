"""Cold segments in an S3-compatible object store (docs/design.md, "Cold history").

A store is named by a URL, `s3://BUCKET/PREFIX?endpoint=http://HOST:PORT&region=R`; its
credentials come only from the standard environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY), never from the URL, so no log line or error message can carry them. A
shard's segment is the objects PREFIX/shard-N/segment-.../FILE, and it exists in the store iff
its manifest.json object does: `upload_segment` puts the five Parquet files first, reads each
back (size and SHA-256 against the manifest), and puts the manifest last. `fetch_file` brings
one object into a local directory (a temporary name, its SHA-256 checked, then renamed), as a
node's cache and `tally segments verify --store` use it.

Every failure to reach the store is a plain OSError (retryable: the node answers UNAVAILABLE);
an object whose content is not the manifest's is a SegmentError (the node's DATA_LOSS).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

from core.store.cold.format import (
    MANIFEST_NAME,
    SEGMENT_PREFIX,
    Manifest,
    SegmentError,
    manifest_of_json,
)

_CHUNK: Final = 1 << 20
_SHARD_DIRECTORY = re.compile(r"shard-([0-9]+)")
CONNECT_TIMEOUT_S: Final = 5.0
REQUEST_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class StoreLocation:
    bucket: str
    prefix: str  # without leading or trailing slash; "" for the bucket's root
    endpoint: str  # scheme://host:port, "" for the provider's default
    region: str

    def __str__(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return where + (f" at {self.endpoint}" if self.endpoint else "")


def parse_store_url(url: str) -> StoreLocation:
    """s3://BUCKET/PREFIX?endpoint=http://HOST:PORT&region=R; ValueError when it is not one
    (or carries credentials, which belong in the environment)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.hostname:
        raise ValueError("a store is s3://BUCKET/PREFIX?endpoint=http://HOST:PORT&region=R")
    if parts.username or parts.password or "@" in parts.netloc:
        raise ValueError(
            "a store URL carries no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    query = parse_qs(parts.query)
    unknown = set(query) - {"endpoint", "region"}
    if unknown:
        raise ValueError(f"a store URL takes endpoint and region, not {sorted(unknown)}")
    endpoint = query.get("endpoint", [""])[0]
    if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"the store's endpoint {endpoint!r} is not http:// or https://")
    region = query.get("region", ["us-east-1"])[0]
    return StoreLocation(parts.netloc, parts.path.strip("/"), endpoint, region)


class ObjectStore:
    """A cluster's cold segments in a bucket, under a prefix."""

    def __init__(self, location: StoreLocation | str) -> None:
        if isinstance(location, str):
            location = parse_store_url(location)
        self.location = location
        access_key = os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not access_key or not secret_key:
            # Only these: never the SDK's other sources (files, an instance's metadata service).
            raise ValueError(
                f"the object store {self.location} needs AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment"
            )
        options: dict[str, Any] = {
            "region": self.location.region,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "request_timeout": REQUEST_TIMEOUT_S,
            "access_key": access_key,
            "secret_key": secret_key,
        }
        if self.location.endpoint:
            endpoint = urlsplit(self.location.endpoint)
            options["endpoint_override"] = endpoint.netloc
            options["scheme"] = endpoint.scheme
        self._filesystem = pafs.S3FileSystem(**options)

    def __str__(self) -> str:
        return str(self.location)

    def key(self, *parts: str) -> str:
        prefix = [self.location.prefix] if self.location.prefix else []
        return "/".join([self.location.bucket, *prefix, *parts])

    def _unreachable(self, doing: str, error: OSError) -> OSError:
        return OSError(f"the object store {self.location}: {doing}: {error}")

    def size(self, key: str) -> int | None:
        """The object's size, None when there is none."""
        try:
            info = self._filesystem.get_file_info(key)
        except OSError as error:
            raise self._unreachable(f"looking up {key}", error) from error
        return int(info.size) if info.type == pafs.FileType.File else None

    def put(self, source: Path, key: str) -> None:
        try:
            with source.open("rb") as data, self._filesystem.open_output_stream(key) as out:
                for chunk in iter(lambda: data.read(_CHUNK), b""):
                    out.write(chunk)
        except OSError as error:
            raise self._unreachable(f"putting {key}", error) from error

    def read_back(self, key: str) -> tuple[int, str]:
        """The object's size and SHA-256 (hex), read whole from the store."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self._filesystem.open_input_stream(key) as data:
                while chunk := data.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except OSError as error:
            raise self._unreachable(f"reading {key}", error) from error
        return size, digest.hexdigest()

    def get(self, key: str, target: Path) -> tuple[int, str]:
        """Write the object to target; its size and SHA-256 (hex)."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self._filesystem.open_input_stream(key) as data, target.open("wb") as out:
                while chunk := data.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except FileNotFoundError:
            raise
        except OSError as error:
            if self.size(key) is None:
                raise FileNotFoundError(f"the object store {self.location} has no {key}") from error
            raise self._unreachable(f"reading {key}", error) from error
        return size, digest.hexdigest()

    def shards(self) -> list[int]:
        """The shards with a directory of segments in the store."""
        matches = [_SHARD_DIRECTORY.fullmatch(n) for n in self._children(self.key())]
        return sorted(int(m.group(1)) for m in matches if m)

    def segment_names(self, shard: int) -> list[str]:
        """The shard's segments in the store (those whose manifest is there), in order."""
        names = self._children(self.key(f"shard-{shard}"))
        candidates = [n for n in names if n.startswith(SEGMENT_PREFIX)]
        return sorted(
            n
            for n in candidates
            if self.size(self.segment_key(shard, n, MANIFEST_NAME)) is not None
        )

    def _children(self, key: str) -> list[str]:
        try:
            infos = self._filesystem.get_file_info(pafs.FileSelector(key, allow_not_found=True))
        except OSError as error:
            raise self._unreachable(f"listing {key}", error) from error
        return [info.base_name for info in infos]

    def segment_key(self, shard: int, segment: str, file: str) -> str:
        return self.key(f"shard-{shard}", segment, file)


def manifest_at(path: Path) -> Manifest:
    """The manifest in a local segment directory, its stated digest checked."""
    manifest, stated = manifest_of_json(json.loads((path / MANIFEST_NAME).read_bytes()))
    if manifest.digest() != stated:
        raise SegmentError(f"segment {path.name}: its manifest's digest is not its content's")
    return manifest


def stored_already(store: ObjectStore, shard: int, path: Path) -> bool:
    """Whether the store has this segment (its manifest object, the same bytes as the local
    one); another manifest under its name is a SegmentError."""
    key = store.segment_key(shard, path.name, MANIFEST_NAME)
    if store.size(key) is None:
        return False
    _, digest = store.read_back(key)
    if digest != hashlib.sha256((path / MANIFEST_NAME).read_bytes()).hexdigest():
        raise SegmentError(f"the object store holds another {path.name} ({key})")
    return True


def upload_file(store: ObjectStore, shard: int, path: Path, file: str) -> None:
    """Put one file of a verified local segment and read it back: a Parquet file against its
    manifest's size and SHA-256, the manifest (put last: it makes the segment exist) against
    the local bytes."""
    key = store.segment_key(shard, path.name, file)
    if file == MANIFEST_NAME:
        local = (path / MANIFEST_NAME).read_bytes()
        expected = (len(local), hashlib.sha256(local).hexdigest())
    else:
        entry = {e.name: e for e in manifest_at(path).files}[file]
        expected = (entry.byte_count, entry.sha256_hex)
    store.put(path / file, key)
    size, digest = store.read_back(key)
    if (size, digest) != expected:
        raise SegmentError(
            f"{key} reads back as {size} bytes with SHA-256 {digest}, not {expected[0]} bytes "
            f"with {expected[1]}"
        )


def upload_segment(store: ObjectStore, shard: int, path: Path) -> bool:
    """Put a verified local segment into the store, files first, manifest last; False when the
    store has it already."""
    if stored_already(store, shard, path):
        return False
    for entry in manifest_at(path).files:
        upload_file(store, shard, path, entry.name)
    upload_file(store, shard, path, MANIFEST_NAME)
    return True


def fetch_file(
    store: ObjectStore,
    shard: int,
    directory: Path,
    file: str,
    *,
    sha256_hex: str = "",
    manifest_digest: str = "",
) -> Path:
    """One object of the segment at directory (directory.name in the store) into directory,
    unless it is there already: downloaded under a temporary name, checked (a Parquet file's
    SHA-256 against its manifest's; a manifest's digest against its content and, when given,
    the digest recorded), then renamed. A mismatch is a SegmentError naming the object."""
    target = directory / file
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    key = store.segment_key(shard, directory.name, file)
    temporary = directory / f".{file}.fetching-{uuid.uuid4().hex}"  # reads fetch in threads
    try:
        _, digest = store.get(key, temporary)
        if sha256_hex and digest != sha256_hex:
            raise SegmentError(
                f"{key} in the object store has SHA-256 {digest}, its manifest says {sha256_hex}"
            )
        if file == MANIFEST_NAME:
            _check_manifest(temporary, key, manifest_digest)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _check_manifest(path: Path, key: str, recorded: str) -> None:
    try:
        manifest, stated = manifest_of_json(json.loads(path.read_bytes()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SegmentError(f"{key} in the object store is not a segment manifest") from error
    if manifest.digest() != stated or (recorded and stated != recorded):
        raise SegmentError(
            f"{key} in the object store is not the manifest recorded"
            + (f" (digest {recorded})" if recorded else "")
        )


def download_segment(store: ObjectStore, shard: int, name: str, directory: Path) -> Path:
    """A whole segment from the store into directory/name, as it is there: the manifest, then
    each file it lists, not checked here (verify_segment judges what came)."""
    target = directory / name
    target.mkdir(parents=True, exist_ok=True)
    store.get(store.segment_key(shard, name, MANIFEST_NAME), target / MANIFEST_NAME)
    try:
        manifest, _ = manifest_of_json(json.loads((target / MANIFEST_NAME).read_bytes()))
    except (ValueError, KeyError, TypeError, AttributeError):
        return target
    for entry in manifest.files:
        if "/" in entry.name or entry.name.startswith("."):
            continue
        try:
            store.get(store.segment_key(shard, name, entry.name), target / entry.name)
        except FileNotFoundError:
            continue  # verify_segment names it missing
    return target
