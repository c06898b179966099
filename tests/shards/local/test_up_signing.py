"""`tally up` signs journal heads out of the box (real processes): it makes a key pair in its
data directory (0600, nothing leaves the machine), says where the public key is, passes the key
to every node, and every node publishes heads that verify with that public key. (Its clients
here are TLS, as the admin identity tally up keeps in its data directory.)"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from core import signing
from core.slots import SlotMap
from shards.local.signing_keys import LOCAL_KEY_DIRECTORY, LOCAL_PRIVATE_KEY
from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import Client, account, transfer
from tests.support.local_up import running_up, wait_serving


async def _run_up(data: Path, log: Path, shard_count: int, run: str) -> list[str]:
    """Start `tally up`, post a transfer on every shard, stop it; returns its stdout lines."""
    async with running_up(log, ["--shards", str(shard_count)], data_dir=data) as up:
        await wait_serving(up)
        async with up.channel() as channel:  # TLS, as tally up's admin
            client = Client(channel)
            ids = _customers_on_each_shard(shard_count, run)
            bank = f"@bank-{run}"
            codes = await client.create(account(bank), *(account(i) for i in ids))
            assert set(codes) == {pb.RESULT_CODE_CREATED}
            results = await client.post(*(transfer(f"t-{i}", bank, i, 10) for i in ids))
            assert {r.code for r in results} == {pb.RESULT_CODE_CREATED}
    return list(up.lines)


def _customers_on_each_shard(shard_count: int, run: str) -> list[str]:
    slot_map = SlotMap.even(shard_count)
    chosen: dict[int, str] = {}
    for n in range(10_000):
        chosen.setdefault(slot_map.shard_of_key(f"cust-{n}"), f"cust-{n}/{run}")
        if len(chosen) == shard_count:
            break
    return [chosen[s] for s in range(shard_count)]


@pytest.mark.parametrize("shard_count", [1, 2])
async def test_tally_up_signs_with_its_own_key_and_publishes_heads(
    tmp_path: Path, scratch: Path, shard_count: int
) -> None:
    data = scratch / "data"
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
