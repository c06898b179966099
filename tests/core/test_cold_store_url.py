"""The object store's URL (credentials never in it) and an unreachable store: a plain OSError,
which the node answers as UNAVAILABLE (retryable), never a SegmentError (DATA_LOSS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.store.cold.format import SegmentError
from core.store.cold.store import ObjectStore, fetch_file, parse_store_url
from tests.support.object_store import free_ports


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


def test_a_store_url_names_bucket_prefix_endpoint_and_region() -> None:
    location = parse_store_url("s3://cold/tally/prod?endpoint=http://127.0.0.1:9000&region=eu-1")
    assert (location.bucket, location.prefix) == ("cold", "tally/prod")
    assert (location.endpoint, location.region) == ("http://127.0.0.1:9000", "eu-1")
    assert parse_store_url("s3://cold").prefix == ""
    assert ObjectStore(location).key("shard-0", "x") == "cold/tally/prod/shard-0/x"


@pytest.mark.parametrize(
    "url",
    [
        "s3://KEY:hunter2@cold/p",
        "http://cold/p",
        "s3://cold/p?access_key=K",
        "s3://cold/p?endpoint=ftp://h:1",
    ],
)
def test_a_store_url_with_credentials_or_unknown_parts_is_refused(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_store_url(url)
    assert "hunter2" not in str(raised.value)


def test_a_store_needs_its_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        ObjectStore("s3://cold/p?endpoint=http://127.0.0.1:9")


def test_an_unreachable_store_is_an_os_error(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    store = ObjectStore(f"s3://cold/p?endpoint=http://127.0.0.1:{port}")
    with pytest.raises(OSError) as raised:
        fetch_file(store, 0, tmp_path / "segment-x", "manifest.json")
    assert not isinstance(raised.value, SegmentError)
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert not (tmp_path / "segment-x" / "manifest.json").exists()
