"""`tally backup` and `tally restore --to TIME` (real processes and servers): a `tally up
--wal-archive` shard is backed up, then acknowledges T1, then a moment M is read from the
database's clock, then T2 is acknowledged and its WAL archived; the backup restored to M holds T1
and not T2, and audits clean (its signatures verify; the published heads of blocks beyond M are
reported missing, as they must be: the restored journal is a prefix of the one they were
published from). Bad restores are refused with one message and exit 2."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import pytest

from shards.local.backup import BACKUP_INFO, RestoreRequest, primary_of, restore, take_backup
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port
from shards.local.replicated_pg import ReplicatedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import Client, account, audit_problems, transfer
from tests.support.local_up import LocalUp, running_up, user_environment, wait_serving
from tests.support.postgres import started_on_a_free_port

COMMAND_TIMEOUT_S = 120.0
ARCHIVE_TIMEOUT_S = 30.0
SHARD_DATABASE = "tally_shard_0"
CHECK_LINE = "tally: check them with: tally audit "


@pytest.fixture
async def archived_up(scratch: Path, tmp_path: Path) -> AsyncIterator[LocalUp]:
    arguments = ["--wal-archive", str(scratch / "archive")]
    async with running_up(tmp_path / "up.log", arguments, data_dir=scratch / "data") as up:
        await wait_serving(up)
        yield up


async def tally(words: Sequence[str], environment: dict[str, str] | None = None) -> tuple[int, str]:
    """`tally WORDS` in a process of its own: exit code and output (stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shards.cli",
        *words,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**user_environment(), **(environment or {})},
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=COMMAND_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def fetch_value(dsn: str, sql: str) -> object:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


async def archive_current_segment(dsn: str) -> None:
    """Close the WAL segment in use (so T2's WAL goes to the archive) and wait until the
    archiver has copied it."""
    segment = await fetch_value(dsn, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + ARCHIVE_TIMEOUT_S
    while True:
        archived = await fetch_value(dsn, "SELECT last_archived_wal FROM pg_stat_archiver")
        if isinstance(archived, str) and archived >= str(segment):
            return
        assert time.monotonic() < deadline, f"{segment} not archived (last: {archived})"
        await asyncio.sleep(0.1)


async def post(up: LocalUp, item: pb.Transaction) -> None:
    async with up.channel() as channel:
        assert await Client(channel).codes(item) == [pb.RESULT_CODE_CREATED]


async def refused(words: Sequence[str], wanted: str) -> None:
    code, output = await tally(["restore", *words])
    assert code == 2, output
    assert wanted in output, output
    assert "Traceback" not in output, output


@pytest.mark.timeout(180)
async def test_a_backup_restored_to_a_moment_between_two_transactions_holds_the_first_only(
    archived_up: LocalUp, scratch: Path
) -> None:
    up = archived_up
    shard_dsn = primary_of(up.data_dir).dsn(SHARD_DATABASE)
    async with up.channel() as channel:
        assert set(await Client(channel).create(account("a"), account("b"))) == {
            pb.RESULT_CODE_CREATED
        }
    backups, archive = scratch / "backups", scratch / "archive"
    code, output = await tally(
        ["backup", "--data-dir", str(up.data_dir), "--backups-dir", str(backups)]
    )
    assert code == 0, output
    (backup,) = [path for path in backups.iterdir() if not path.name.startswith(".")]
    assert f"tally backup: {backup} (verified with pg_verifybackup)" in output
    info = json.loads((backup / BACKUP_INFO).read_text())
    assert re.search(rf"start {info['start_lsn']} at ", output)
    assert re.search(rf"end   {info['end_lsn']} at ", output)

    await post(up, transfer("T1", "a", "b", 100))
    moment = await fetch_value(shard_dsn, "SELECT clock_timestamp()")
    assert isinstance(moment, datetime.datetime)
    await asyncio.sleep(1.0)
    await post(up, transfer("T2", "a", "b", 200))
    await archive_current_segment(shard_dsn)

    target = scratch / "restored"
    common = ["--backup", str(backup), "--wal-archive", str(archive)]
    await bad_restores_are_refused(common, target, moment, info, scratch)
    assert not target.exists()

    code, output = await tally(
        ["restore", *common, "--to", moment.isoformat(), "--target-dir", str(target)]
    )
    restored = restored_server(target, output)
    try:
        assert code == 0, output
        assert "promoted" in output and SHARD_DATABASE in output, output
        await check_restored(up, restored.dsn(SHARD_DATABASE), moment, output)
    finally:
        await asyncio.to_thread(restored.stop, "immediate")
    await an_archive_short_of_the_time_is_said(up, common, scratch / "short")


async def bad_restores_are_refused(
    common: Sequence[str],
    target: Path,
    moment: datetime.datetime,
    info: dict[str, str],
    scratch: Path,
) -> None:
    """Each bad restore is one message and exit 2, and touches nothing."""
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    await refused(
        [*common, "--to", future.isoformat(), "--target-dir", str(target)], "is in the future"
    )
    early = datetime.datetime.fromisoformat(info["start_time"]) - datetime.timedelta(minutes=1)
    await refused(
        [*common, "--to", early.isoformat(), "--target-dir", str(target)],
        "is before the end of backup",
    )
    await refused([*common, "--to", "2026-01-01T00:00:00", "--target-dir", str(target)], "no zone")
    await refused([*common, "--to", "yesterday", "--target-dir", str(target)], "not an ISO-8601")
    occupied = scratch / "occupied"
    occupied.mkdir()
    (occupied / "something").write_text("kept")
    await refused(
        [*common, "--to", moment.isoformat(), "--target-dir", str(occupied)], "is not empty"
    )
    assert (occupied / "something").read_text() == "kept"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        words = [*common, "--to", moment.isoformat(), "--target-dir", str(target)]
        await refused([*words, "--port", port], "is in use")
    missing = ["--backup", str(scratch / "nowhere"), *common[2:]]  # the same --wal-archive
    await refused([*missing, "--to", moment.isoformat(), "--target-dir", str(target)], "no backup")


async def an_archive_short_of_the_time_is_said(
    up: LocalUp, common: Sequence[str], target: Path
) -> None:
    """T3 committed but its segment not archived: a restore to after it cannot get there, and
    says so in PostgreSQL's terms (the copy left for a look, its server stopped)."""
    await post(up, transfer("T3", "a", "b", 300))
    await asyncio.sleep(0.2)
    after = datetime.datetime.now(datetime.UTC).isoformat()
    code, output = await tally(["restore", *common, "--to", after, "--target-dir", str(target)])
    assert code == 2 and "the WAL archive ends before the time asked for" in output, output
    assert "Traceback" not in output, output
    assert not EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=target, port=5432)).is_running()


async def printed_audit_command_passes(output: str) -> None:
    """The audit command tally restore printed, run by a shell as printed (the password read
    from the restored directory's file, never written out)."""
    line = next(line for line in output.splitlines() if "audit it: " in line)
    command = line.split("audit it: ", 1)[1]
    assert command.endswith(" tally audit") and "$(cat " in command, command
    command = command.removesuffix("tally audit") + f"{sys.executable} -m shards.cli audit"
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, env=user_environment(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    report, _ = await asyncio.wait_for(process.communicate(), timeout=COMMAND_TIMEOUT_S)
    assert process.returncode == 0, report.decode()


def restored_server(target: Path, output: str) -> EmbeddedPostgres:
    """The server tally restore left running on target (its port read from what it said)."""
    found = re.search(r"PostgreSQL runs on 127\.0\.0\.1:(\d+)", output)
    port = int(found.group(1)) if found else 5432  # stop() needs the data directory alone
    return EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=target, port=port))


async def check_restored(up: LocalUp, dsn: str, moment: datetime.datetime, output: str) -> None:
    """T1 is there and T2 is not; the last transaction replayed was before the moment; the
    audit is clean, and with the published heads it names only the blocks past the moment."""
    ids = await fetch_value(dsn, "SELECT array_agg(id ORDER BY id) FROM transactions")
    assert ids == ["T1"], ids
    replayed = re.search(r"last transaction replayed: committed at (\S+)", output)
    assert replayed is not None, output
    assert datetime.datetime.fromisoformat(replayed.group(1)) <= moment
    assert await audit_problems(dsn) == []
    await printed_audit_command_passes(output)
    check = next(line for line in up.lines if line.startswith(CHECK_LINE))
    heads_words = check.removeprefix("tally: check them with: tally ").split()
    environment = {"TALLY_AUDIT_DSNS": dsn}
    code, report = await tally([*heads_words[:3], "--json"], environment)  # audit --verify-key
    assert code == 0, report
    code, report = await tally([*heads_words, "--json"], environment)
    assert code == 1, report
    # Every head up to the restored journal's end matches it; the one of T2's block (published
    # by the original after M) names a block the copy does not have, and is said.
    t2_block = await fetch_value(
        primary_of(up.data_dir).dsn(SHARD_DATABASE),
        "SELECT block_sequence FROM transactions WHERE id = 'T2'",
    )
    problems = json.loads(report)["problems"]
    assert [(p["kind"], p["block"]) for p in problems] == [("published_head_missing", t2_block)]


def test_an_archive_directory_is_the_server_users(tmp_path: Path) -> None:
    """--wal-archive's directory is made 0700 (PostgreSQL's own settings name it)."""
    archive = tmp_path / "deep" / "archive"
    server = EmbeddedPostgres(
        EmbeddedPostgresConfig(data_dir=tmp_path / "data", port=5432, wal_archive=archive)
    )
    server.prepare_archive()
    assert archive.is_dir() and archive.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        assert archive.stat().st_uid != 0  # tally-pg's, which runs the server


async def test_a_backup_of_a_dsn_takes_its_password_from_the_environment_only(
    scratch: Path,
) -> None:
    """tally backup with TALLY_DSN (any PostgreSQL; a server of its own here, not the session's,
    which by then holds every test's database and takes a minute to copy): verified, and the
    password is in no line it prints."""
    backups = scratch / "backups"
    pg = await asyncio.to_thread(
        started_on_a_free_port,
        lambda port: EmbeddedPostgresConfig(data_dir=scratch / "own-pg", port=port),
    )
    try:
        code, output = await tally(
            ["backup", "--backups-dir", str(backups)], {"TALLY_DSN": pg.dsn("postgres")}
        )
    finally:
        await asyncio.to_thread(pg.stop)
    assert code == 0, output
    assert "verified with pg_verifybackup" in output and pg.password not in output, output
    (backup,) = backups.iterdir()
    assert sorted(path.name for path in backup.iterdir()) == [
        "backup_manifest", "base.tar.gz", "pg_wal.tar.gz", BACKUP_INFO
    ]  # fmt: skip


async def test_a_backup_refused_says_why(scratch: Path) -> None:
    backups = ["--backups-dir", str(scratch / "backups")]
    unreachable = "postgresql://postgres:sekrit-word@127.0.0.1:1/postgres"
    code, output = await tally(["backup", *backups], {"TALLY_DSN": unreachable})
    assert code == 2 and "cannot connect to" in output, output
    assert "sekrit-word" not in output and "Traceback" not in output, output
    code, output = await tally(["backup", *backups, "--data-dir", str(scratch / "none")])
    assert code == 2 and "is not the data directory of a tally up" in output, output
    code, output = await tally(["backup", "--data-dir", str(scratch)])
    assert code == 2 and "--backups-dir" in output, output
    both = ["--dsn", unreachable, "--data-dir", str(scratch)]
    code, output = await tally(["backup", *backups, *both])
    assert code == 2 and "not both" in output, output
    assert not any((scratch / "backups").glob("*")), "a refused backup leaves nothing"


async def insert(dsn: str, value: int) -> None:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS t (x int PRIMARY KEY)")
        await connection.execute("INSERT INTO t VALUES ($1)", value)
    finally:
        await connection.close()


@pytest.mark.timeout(180)
async def test_a_replicated_archive_spans_a_failover_and_a_restore_follows_the_new_timeline(
    scratch: Path,
) -> None:
    """tally up --replicas 1 --wal-archive: both members archive into one directory; a backup
    taken before a failover restores to a moment after it (recovery follows the new primary's
    timeline through the history file it archived)."""
    archive = scratch / "archive"
    server = ReplicatedPostgres(scratch / "data", [free_port(), free_port()], wal_archive=archive)
    await asyncio.to_thread(server.start)
    try:
        await insert(server.dsn(), 1)
        info = await asyncio.to_thread(take_backup, scratch / "backups", dsn=server.dsn())
        await insert(server.dsn(), 2)  # on timeline 1
        old_primary = server.primary.running_pid()
        assert old_primary is not None
        os.kill(old_primary, signal.SIGKILL)
        await asyncio.to_thread(server.fail_over)
        await insert(server.dsn(), 3)  # on timeline 2
        moment = await fetch_value(server.dsn(), "SELECT clock_timestamp()")
        assert isinstance(moment, datetime.datetime)
        await asyncio.sleep(1.0)
        await insert(server.dsn(), 4)
        await archive_current_segment(server.primary.dsn())
        assert (archive / "00000002.history").exists()
        request = RestoreRequest(info.directory, moment, archive, scratch / "restored")
        result = await asyncio.to_thread(restore, request)
        try:
            rows = await fetch_value(result.server.dsn(), "SELECT array_agg(x ORDER BY x) FROM t")
            assert rows == [1, 2, 3]
            assert result.timeline == 3  # a new timeline after 1 and the failover's 2
        finally:
            await asyncio.to_thread(result.server.stop, "immediate")
    finally:
        for member in server.members:
            await asyncio.to_thread(member.stop, "immediate")


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("postgresql://backup:s%40cret@db.example:5432/postgres", "s@cret"),
        ("postgresql://backup@db.example/postgres?password=pa%26ss&sslmode=require", "pa&ss"),
        ("host=db.example user=backup password='a b\\'c' dbname=postgres", "a b'c"),
        ("host=db.example user=backup", ""),
    ],
)
def test_pg_basebackup_gets_the_password_in_a_passfile_and_never_in_its_conninfo(
    dsn: str, password: str, tmp_path: Path
) -> None:
    from shards.local import backup

    assert backup._password_of(dsn) == password
    conninfo = backup._with_passfile(dsn, tmp_path / "pgpass")
    assert "passfile" in conninfo and "db.example" in conninfo
    assert not password or password not in conninfo
    with backup._passfile_for(dsn) as passfile:
        assert passfile.stat().st_mode & 0o777 == 0o600
        escaped = password.replace("\\", "\\\\").replace(":", "\\:")
        assert passfile.read_text() == f"*:*:*:*:{escaped}\n"
    assert not passfile.exists()


def test_the_archive_and_backups_directories_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shards.cli.main import build_parser

    monkeypatch.setenv("TALLY_WAL_ARCHIVE", "/srv/archive")
    monkeypatch.setenv("TALLY_BACKUPS_DIR", "/srv/backups")
    parser = build_parser()
    assert parser.parse_args(["up"]).wal_archive == Path("/srv/archive")
    assert parser.parse_args(["backup"]).backups_dir == Path("/srv/backups")
    restore_words = ["restore", "--backup", "b", "--to", "t", "--target-dir", "n"]
    assert parser.parse_args(restore_words).wal_archive == Path("/srv/archive")
    monkeypatch.delenv("TALLY_WAL_ARCHIVE")
    assert build_parser().parse_args(["up"]).wal_archive is None
