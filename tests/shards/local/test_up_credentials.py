"""`tally up` keeps TLS credentials for its user (real processes): on its first start it makes
DATA_DIR/tls (the cluster CA, the cluster's certificate, an admin identity, a token key: every
key 0600 in a 0700 directory) and says where; a second start keeps them (the same CA); a
`tally` command run where it runs, with no credentials flag, finds its admin identity; and a
plain channel, or a TLS one without a certificate of its CA, gets nothing from its listeners."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shards.security.credentials import ClientSecurity, aio_channel
from tests.support import security
from tests.support.local_up import (
    CREDENTIALS_LINE,
    LocalUp,
    run_as_user,
    running_up,
    scratch_directory,
    wait_serving,
)

KEYS = ["admin.key", "ca.key", "cluster.key", "token-signing.key"]
SHARD_LINE = "tally: shard "
AUDIT_LINE = "tally: audit (tally.v1.Audit, read-only) on "
PROBE = health_pb2.HealthCheckRequest(service="")


@pytest.fixture
def checkout() -> Iterator[Path]:
    """Where `make up` runs: tally up keeps its data in .tally there (outside pytest's root:
    see tests/support/local_up.py)."""
    with scratch_directory() as path:
        yield path


def said(up: LocalUp) -> list[str]:
    """What it printed about its credentials (before anything else)."""
    return [line for line in up.lines if line.startswith(("tally: TLS ", "tally: admin "))]


def listeners(up: LocalUp) -> list[str]:
    """Every endpoint it printed: the Ledger's, and with shards each node's and the audit's."""
    found = [up.target]
    for line in up.lines:
        if line.startswith(SHARD_LINE):
            found.append(line.rsplit(" on ", 1)[1].strip())
        elif line.startswith(AUDIT_LINE):
            found.append(line.removeprefix(AUDIT_LINE).strip())
    return found


async def probe_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(PROBE, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def check_only_its_identities_get_in(up: LocalUp, shard_count: int) -> None:
    ends = listeners(up)
    assert len(ends) == (1 if shard_count == 1 else shard_count + 2)
    its_ca_alone = ClientSecurity(up.admin().ca)  # TLS, its CA trusted, no certificate
    for target in ends:
        async with up.channel(target) as channel:
            assert await probe_code(channel) == grpc.StatusCode.OK, target
        async with grpc.aio.insecure_channel(target) as channel:
            assert await probe_code(channel) == grpc.StatusCode.UNAVAILABLE, target
        async with aio_channel(target, its_ca_alone) as channel:
            assert await probe_code(channel) == grpc.StatusCode.UNAVAILABLE, target
        async with security.channel(target) as channel:  # another CA's admin
            assert await probe_code(channel) == grpc.StatusCode.UNAVAILABLE, target


@pytest.mark.parametrize("shard_count", [1, 2])
async def test_tally_up_makes_its_credentials_once_and_its_commands_present_them(
    tmp_path: Path, checkout: Path, shard_count: int
) -> None:
    root = (checkout / ".tally" / "tls").resolve()
    arguments = ["--shards", str(shard_count)]
    async with running_up(tmp_path / "up.log", arguments, cwd=checkout) as up:
        assert up.credentials == root
        assert said(up) == [
            f"{CREDENTIALS_LINE}{root} (made now: ca, cluster, admin, token key); "
            f"CA {root / 'ca.pem'}",
            f"tally: admin identity {root / 'admin.pem'} (tally commands use it by default); "
            "issue others with: tally credentials issue NAME --role ROLE",
        ]
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert sorted(path.name for path in root.glob("*.key")) == KEYS
        for key in KEYS:
            assert stat.S_IMODE((root / key).stat().st_mode) == 0o600, key
        kept = ["ca.pem", "ca.key", "cluster.pem", "cluster.key", "admin.pem", "admin.key"]
        first = {name: (root / name).read_bytes() for name in kept}
        await wait_serving(up)
        await check_only_its_identities_get_in(up, shard_count)
        target = f"--target={up.target}"
        created = await run_as_user(
            checkout, ["create-account", "cust-1/dep", "--currency=USD", "--code=100", target]
        )
        assert created[0] == 0 and created[1].startswith("account cust-1/dep: created at "), created
        shown = await run_as_user(checkout, ["show", "cust-1/dep", target])
        assert shown[0] == 0, shown
        assert shown[1].splitlines()[0] == "cust-1/dep  USD  code 100  open  version 1", shown
    async with running_up(tmp_path / "up-again.log", arguments, cwd=checkout) as up:
        assert said(up)[0] == f"{CREDENTIALS_LINE}{root} (kept); CA {root / 'ca.pem'}"
        assert {name: (root / name).read_bytes() for name in kept} == first  # the same CA
        await wait_serving(up)
        shown = await run_as_user(checkout, ["show", "cust-1/dep", f"--target={up.target}"])
        assert shown[0] == 0 and shown[1].startswith("cust-1/dep  USD  code 100  open"), shown
