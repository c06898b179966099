"""`tally up` signs journal heads out of the box (real processes): it makes a key pair in its
data directory (0600, nothing leaves the machine), says where the public key is, passes the key
to every node, and every node publishes heads that verify with that public key."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core import signing
from core.slots import SlotMap
from shards.local import supervisor
from shards.local.signing_keys import LOCAL_KEY_DIRECTORY, LOCAL_PRIVATE_KEY
from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import Client, account, transfer
from tests.support.paths import REPO_ROOT

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


async def _run_up(data: Path, log: Path, shard_count: int, run: str) -> list[str]:
    """Start `tally up`, post a transfer on every shard, stop it; returns its stdout lines."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    child = await supervisor.start(
        ["up", "--shards", str(shard_count), "--data-dir", str(data), "--listen", "127.0.0.1:0"],
        log,
        name="tally up",
        environment=environment,
        inherit_environment=False,
        cwd=REPO_ROOT,
        new_session=True,
        serving_prefixes=(supervisor.LEDGER_SERVING_PREFIX,),
        serving_timeout_s=START_TIMEOUT_S,
    )
    try:
        async with grpc.aio.insecure_channel(child.endpoint.split()[0]) as channel:
            await _wait_serving(channel)
            client = Client(channel)
            ids = _customers_on_each_shard(shard_count, run)
            bank = f"@bank-{run}"
            codes = await client.create(account(bank), *(account(i) for i in ids))
            assert set(codes) == {pb.RESULT_CODE_CREATED}
            results = await client.post(*(transfer(f"t-{i}", bank, i, 10) for i in ids))
            assert {r.code for r in results} == {pb.RESULT_CODE_CREATED}
        return list(child.stdout_lines)
    finally:
        child.send_signal(signal.SIGINT)
        try:
            await child.wait(STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        await child.close()


def _customers_on_each_shard(shard_count: int, run: str) -> list[str]:
    slot_map = SlotMap.even(shard_count)
    chosen: dict[int, str] = {}
    for n in range(10_000):
        chosen.setdefault(slot_map.shard_of_key(f"cust-{n}"), f"cust-{n}/{run}")
        if len(chosen) == shard_count:
            break
    return [chosen[s] for s in range(shard_count)]


async def _wait_serving(channel: grpc.aio.Channel) -> None:
    """One node serves (as a standby) before it holds the writer lease: wait for SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(200):
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        if answer.status == health_pb2.HealthCheckResponse.SERVING:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("tally up did not become SERVING")


@pytest.mark.parametrize("shard_count", [1, 2])
async def test_tally_up_signs_with_its_own_key_and_publishes_heads(
    tmp_path: Path, shard_count: int
) -> None:
    data = tmp_path / "data"
    lines = await _run_up(data, tmp_path / "up.log", shard_count, "first")
    private_path = data / LOCAL_KEY_DIRECTORY / LOCAL_PRIVATE_KEY
    public_path = private_path.with_name(private_path.name + ".pub")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    public = signing.load_public(public_path.read_bytes(), "pub")
    said = [line for line in lines if line.startswith("tally: journal heads signed")]
    assert said == [
        f"tally: journal heads signed (key {public.key_id}, made now in {private_path.parent}); "
        f"public key {public_path}; heads published to {data / 'heads'}"
    ]
    assert (
        f"tally: check them with: tally audit --verify-key {public_path} "
        f"--published-heads {data / 'heads'}"
    ) in lines
    verifier = signing.Verifier((public,))
    for shard in range(shard_count):
        text = (data / "heads" / f"shard-{shard}.heads.jsonl").read_text()
        heads = [signing.parse_head_line(line) for line in text.splitlines()]
        assert len(heads) >= 2  # the accounts' block and the transfers' block at least
        for head in heads:
            assert head.shard == shard
            problem = verifier.problem(
                shard,
                head.block,
                bytes.fromhex(head.hash_hex),
                head.key_id,
                bytes.fromhex(head.signature_hex),
            )
            assert problem == ""
    # The key stays: a second start signs with the same one.
    lines = await _run_up(data, tmp_path / "up2.log", shard_count, "second")
    assert any(f"key {public.key_id}, kept in" in line for line in lines)
