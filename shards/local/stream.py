"""`tally up --stream`: the in-loan monitoring pipeline beside the ledger, supervised like the
nodes. The embedded NATS server with JetStream (shards/local/embedded_nats.py), one `tally
relay` child publishing the ledger's change stream (the node's, or with --shards N the
gateway's) to stream TALLY_JOURNAL, and one `tally monitor` child reading it, publishing alerts
to TALLY_ALERTS and serving tally.v1.Monitor.

Credentials, in tally up's credentials directory (DATA_DIR/tls, of its CA), issued when absent:
`tally-nats` (the broker's server certificate, for 127.0.0.1 and localhost), `tally-relay` and
`tally-monitor` (the broker's two publishers: the monitor publishes its alerts), all three
name-only, since NATS maps a certificate to a user by name and Go's x509 parser refuses
Tally's grant extension; and `tally-relay-ledger`, the relay's identity at the ledger: role
`monitor` over `**`, the least that reads every block whole. The monitor's own listener
presents the cluster certificate, as a node's does, and trusts the same CA, token key and
revocations.

Files: the JetStream store in DATA_DIR/nats/jetstream (kept across restarts: the relay resumes
from what the broker holds), the monitor's checkpoint in DATA_DIR/monitor/checkpoint.json and
its rules in DATA_DIR/monitor/rules.toml (copied from the repository's deploy/monitor/rules.toml
on first start, then the operator's to edit) unless --monitor-rules names another file.

Supervision: the broker, the relay and the monitor are each restarted with tally up's backoff
when they exit (shards.local.supervisor.keep_running), on the ports they had; all three die
with tally up (the kernel's parent-death signal). Each runs in a session of its own, so a
terminal's Ctrl-C reaches tally up alone, which stops them in the order monitor, relay, broker
(rather than all at once, each exit then said as one to restart): under --shards N before the
gateway and nodes, with one shard after the node in this process.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from core.authority import Role
from core.flows import rules
from shards.local import supervisor
from shards.local.cluster import RESTART_POLICY, STOP_TIMEOUT_S, Child
from shards.local.embedded_nats import EmbeddedNats, EmbeddedNatsConfig, EmbeddedNatsError
from shards.local.embedded_pg import free_port
from shards.rpc.broker import (
    ALERTS_STREAM,
    ALERTS_SUBJECTS,
    DEFAULT_MONITOR_PORT,
    DEFAULT_NATS_PORT,
    JOURNAL_STREAM,
    JOURNAL_SUBJECTS,
)
from shards.security import directory
from shards.security.pki import CertificateError

NATS_NAME: Final = "tally-nats"
RELAY_NAME: Final = "tally-relay"
MONITOR_NAME: Final = "tally-monitor"
RELAY_LEDGER_NAME: Final = "tally-relay-ledger"
NATS_HOSTS: Final = ("127.0.0.1", "localhost")
HOST: Final = "127.0.0.1"
RELAY_READY_PREFIX: Final = "tally: relaying "
MONITOR_READY_PREFIX: Final = "tally: serving tally.v1.Monitor on "
METRICS_PREFIX: Final = "tally: metrics on "
SHIPPED_RULES: Final = Path(__file__).resolve().parents[2] / "deploy" / "monitor" / "rules.toml"


class StreamSetupError(RuntimeError):
    """`tally up --stream` cannot start its pipeline: the message says what to change."""


@dataclass(frozen=True)
class StreamConfig:
    """What `tally up --stream` was asked for: nats_port and monitor_port 0 for a free one;
    rules_path "" for DATA_DIR/monitor/rules.toml; metrics_host "" for no monitor metrics;
    child_flags (logging) given to the relay and the monitor, monitor_flags (its listener's
    limits, as tally up's others have them) to the monitor alone."""

    data_dir: Path
    nats_port: int = DEFAULT_NATS_PORT
    monitor_port: int = DEFAULT_MONITOR_PORT
    rules_path: str = ""
    metrics_host: str = HOST
    child_flags: tuple[str, ...] = ()
    monitor_flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for flag, port in (("--nats-port", self.nats_port), ("--monitor-port", self.monitor_port)):
            if not 0 <= port < 65536:
                raise StreamSetupError(f"{flag} must be 0..65535 (0: a free one), got {port}")
        if self.nats_port and self.nats_port == self.monitor_port:
            raise StreamSetupError(f"--nats-port and --monitor-port are both {self.nats_port}")

    @property
    def credentials(self) -> Path:
        return self.data_dir / "tls"

    @property
    def monitor_dir(self) -> Path:
        return self.data_dir / "monitor"


def port_in_use(host: str, port: int) -> bool:
    """Something listens on host:port (bound as the servers bind: SO_REUSEADDR, so a port
    left in TIME_WAIT by the last run is not taken for one in use)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(config: StreamConfig) -> None:
    """StreamSetupError naming the flag when a port asked for is taken: checked before anything
    starts (the broker's own start would otherwise find the other process listening and take it
    for itself)."""
    for flag, port, who in (
        ("--nats-port", config.nats_port, "another NATS server, or another tally up --stream"),
        ("--monitor-port", config.monitor_port, "another tally monitor, or tally up --stream"),
    ):
        if port and port_in_use(HOST, port):
            raise StreamSetupError(
                f"{flag} {port}: {HOST}:{port} is in use ({who}?); give another port, or 0 for "
                "a free one"
            )


def issue_credentials(root: Path) -> list[str]:
    """The broker's, the relay's and the monitor's certificates in the credentials directory
    root (of its CA), each issued when absent; the names of those issued now."""
    wanted: list[tuple[str, frozenset[Role], tuple[str, ...], tuple[str, ...]]] = [
        (NATS_NAME, frozenset(), (), NATS_HOSTS),
        (RELAY_NAME, frozenset(), (), ()),
        (MONITOR_NAME, frozenset(), (), ()),
        (RELAY_LEDGER_NAME, frozenset({Role.MONITOR}), ("**",), ()),
    ]
    paths = directory.Paths(root)
    made = []
    for name, roles, accounts, hosts in wanted:
        if paths.certificate(name).exists() and paths.key(name).exists():
            continue
        try:
            directory.issue_certificate(root, name, roles, accounts, hosts)
        except (OSError, CertificateError) as error:
            raise StreamSetupError(
                f"cannot issue the {name} certificate in {root}: {error}"
            ) from None
        made.append(name)
    return made


def rules_file(config: StreamConfig) -> Path:
    """The monitor's rules, checked: as given, or DATA_DIR/monitor/rules.toml (copied from the
    shipped file on first start)."""
    if config.rules_path:
        path = Path(config.rules_path).resolve()
        flag = f"--monitor-rules {path}"
    else:
        path = config.monitor_dir / "rules.toml"
        flag = str(path)
        if not path.exists():
            if not SHIPPED_RULES.is_file():
                raise StreamSetupError(
                    f"{path} does not exist and the shipped rules ({SHIPPED_RULES}) are not "
                    "here (an installation without the repository): give --monitor-rules PATH"
                )
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(SHIPPED_RULES, path)
            except OSError as error:
                raise StreamSetupError(f"cannot copy {SHIPPED_RULES} to {path}: {error}") from None
    try:
        rules.parse_rules(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise StreamSetupError(f"{flag}: {error.strerror or error}") from None
    except rules.RulesError as error:
        raise StreamSetupError(f"{flag}: {error}") from None
    return path


def _nats_flags(config: StreamConfig, name: str) -> list[str]:
    paths = directory.Paths(config.credentials)
    return [
        f"--nats-ca={paths.certificate(directory.CA)}",
        f"--nats-cert={paths.certificate(name)}",
        f"--nats-key={paths.key(name)}",
    ]


def loopback_target(endpoint: str) -> str:
    """Where a local client reaches a server bound to endpoint: a wildcard host (0.0.0.0, ::)
    is reached on 127.0.0.1, which the cluster certificate names."""
    host, port = endpoint.rsplit(":", 1)
    return f"{HOST}:{port}" if host in ("", "0.0.0.0", "::", "[::]") else endpoint


class LocalStream:
    """The broker, the relay and the monitor of one `tally up --stream` (see the module's
    docstring): start, supervise, stop. Its lines on stdout say where each is. Made before
    anything starts: making it checks the ports and the rules and issues the certificates
    (StreamSetupError saying what to change), so a bad input costs no PostgreSQL start."""

    def __init__(self, config: StreamConfig) -> None:
        check_ports(config)
        self.config = config
        self._rules = rules_file(config)
        self._made = issue_credentials(config.credentials)
        paths = directory.Paths(config.credentials)
        nats_port = config.nats_port or free_port(HOST)
        self.nats = EmbeddedNats(
            EmbeddedNatsConfig(
                data_dir=config.data_dir / "nats",
                port=nats_port,
                ca_file=paths.certificate(directory.CA),
                certificate_file=paths.certificate(NATS_NAME),
                key_file=paths.key(NATS_NAME),
                host=HOST,
                publishers=(RELAY_NAME, MONITOR_NAME),
            )
        )
        self._log_dir = config.data_dir / "logs"
        self.relay: Child | None = None
        self.monitor: Child | None = None

    def _relay_child(self, target: str) -> Child:
        paths = directory.Paths(self.config.credentials)
        arguments = [
            "relay",
            f"--target={loopback_target(target)}",
            f"--nats-url={self.nats.url}",
            *_nats_flags(self.config, RELAY_NAME),
            f"--stream={JOURNAL_STREAM}",
            f"--ca={paths.certificate(directory.CA)}",
            f"--cert={paths.certificate(RELAY_LEDGER_NAME)}",
            f"--key={paths.key(RELAY_LEDGER_NAME)}",
            *self.config.child_flags,
        ]
        return Child(
            "relay",
            arguments,
            self._log_dir,
            {},
            (RELAY_READY_PREFIX,),
            pin_ports=False,
            new_session=True,
        )

    def _monitor_child(self) -> Child:
        metrics = f"{self.config.metrics_host}:0" if self.config.metrics_host else ""
        arguments = [
            "monitor",
            f"--nats-url={self.nats.url}",
            *_nats_flags(self.config, MONITOR_NAME),
            f"--journal-stream={JOURNAL_STREAM}",
            f"--alerts-stream={ALERTS_STREAM}",
            f"--rules={self._rules}",
            f"--checkpoint={self.config.monitor_dir / 'checkpoint.json'}",
            f"--listen={HOST}:{self.config.monitor_port}",
            f"--metrics-listen={metrics}",
            *directory.server_flags(self.config.credentials),
            *self.config.monitor_flags,
            *self.config.child_flags,
        ]
        return Child(
            "monitor", arguments, self._log_dir, {}, (MONITOR_READY_PREFIX,), new_session=True
        )

    async def start(self, target: str) -> None:
        """The broker, then the relay of target's stream, then the monitor, each once it is
        up; StreamSetupError (after stopping what started) if one does not come up."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.config.monitor_dir.mkdir(parents=True, exist_ok=True)
        if self._made:
            made = ", ".join(self._made)
            print(f"tally: issued in {self.config.credentials}: {made}", flush=True)
        try:
            await self.nats.start()
            _say_broker(self.nats)
            self.relay = self._relay_child(target)
            await self.relay.start()
            print(
                f"tally: relay: the change stream of {loopback_target(target)} to stream "
                f"{JOURNAL_STREAM} ({JOURNAL_SUBJECTS}) (log {self._log_dir / 'relay.log'})",
                flush=True,
            )
            self.monitor = self._monitor_child()
            monitor = await self.monitor.start()
            _say_monitor(monitor, self._rules, self.config.monitor_dir)
        except (EmbeddedNatsError, supervisor.NotServing) as error:
            await self.stop()
            raise StreamSetupError(_first_lines(str(error))) from None
        except BaseException:
            await self.stop()
            raise

    async def supervise(self, stopping: asyncio.Event) -> None:
        """Restart the broker, the relay and the monitor whenever one exits, until stopping."""
        async with asyncio.TaskGroup() as group:
            group.create_task(supervisor.keep_running(self.nats, stopping, RESTART_POLICY))
            for child in (self.relay, self.monitor):
                if child is not None:
                    group.create_task(supervisor.keep_running(child, stopping, RESTART_POLICY))

    async def stop(self) -> None:
        """The monitor (it checkpoints), the relay, then the broker (JetStream flushes)."""
        for child in (self.monitor, self.relay):
            if child is not None and child.started:
                await child.process.stop(STOP_TIMEOUT_S, signal.SIGTERM)
        await self.nats.stop()


def _say_broker(nats: EmbeddedNats) -> None:
    config = nats.config
    print(
        f"tally: NATS JetStream on {nats.url} (store {config.data_dir / 'jetstream'}; TLS, "
        f"client certificates of {config.ca_file} named {', '.join(config.publishers)})",
        flush=True,
    )


def _say_monitor(monitor: supervisor.TallyProcess, rules_path: Path, monitor_dir: Path) -> None:
    for line in monitor.stdout_lines:
        if line.startswith(METRICS_PREFIX):
            print(f"tally: metrics of monitor on {line.removeprefix(METRICS_PREFIX)}", flush=True)
    print(
        f"tally: monitor (tally.v1.Monitor) on {monitor.endpoint}; rules {rules_path}; "
        f"checkpoint {monitor_dir / 'checkpoint.json'}; alerts to stream {ALERTS_STREAM} "
        f"({ALERTS_SUBJECTS})",
        flush=True,
    )


def _first_lines(text: str, tail_line_count: int = 8) -> str:
    """A failed start's message cut to what a terminal shows: its first line (who, how it
    ended) and the last lines of its log (why)."""
    lines = text.splitlines()
    if len(lines) <= tail_line_count + 1:
        return text
    return "\n".join([lines[0], "...", *lines[-tail_line_count:]])
