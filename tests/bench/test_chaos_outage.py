"""The campaign's outage-isolation check (bench/chaos/campaign.check_outage_isolation): a read
that failed while one shard was out is `outage_spread` only if it needs no shard under a fault,
and a shard counts as out until its gateways can have reconnected (RECONNECT_TAIL_S after its
fault healed). A pure check over a history and a schedule: no processes."""

from __future__ import annotations

from bench.chaos import checker
from bench.chaos.bank import Bank, History, Item, Read, transfer
from bench.chaos.campaign import RECONNECT_TAIL_S, check_outage_isolation
from bench.chaos.faults import Fault

SHARD_OF = {"cust-0/dep": 0, "cust-0/sav": 0, "cust-2/dep": 2}


def _verdict(read_at_s: float, faults: list[Fault]) -> checker.Verdict:
    history = History(Bank())
    history.add(
        Item(transfer("cust-0/t1", "cust-0/dep", "cust-0/sav", 5, "USD"), "transfer", False, 0)
    )
    history.reads.append(Read("cust-0/t1", "UNAVAILABLE", read_at_s, 0.1, "shard 0: failed"))
    verdict = checker.Verdict()
    check_outage_isolation(history, faults, SHARD_OF.__getitem__, verdict)
    return verdict


def _fault(kind: str, target: str, started_s: float, healed_s: float) -> Fault:
    return Fault(started_s, kind, target, healed_s - started_s, "", started_s, healed_s)


def test_a_read_failing_for_a_shard_still_reconnecting_is_that_shards_outage() -> None:
    """Shard 0's node was killed and is back 1 s before the read; shard 1 is paused during it.
    The read (of shard 0's transaction) failed connecting to shard 0: not shard 1's doing.
    Before: reported as outage_spread (2 of them in the 30-minute campaign at 38fd8ab)."""
    faults = [_fault("kill", "node-0", 10.0, 20.0), _fault("pause", "node-1", 20.5, 23.0)]
    verdict = _verdict(21.0, faults)
    assert verdict.anomalies == []
    assert verdict.checked["reads during one shard's outage"] == 0  # two shards out: not judged


def test_a_read_failing_during_another_shards_outage_alone_is_outage_spread() -> None:
    healed = 20.0
    faults = [
        _fault("kill", "node-0", 10.0, healed),
        _fault("pause", "node-1", healed + RECONNECT_TAIL_S + 1, healed + RECONNECT_TAIL_S + 5),
    ]
    verdict = _verdict(healed + RECONNECT_TAIL_S + 2, faults)
    assert [a.kind for a in verdict.anomalies] == ["outage_spread"]
    assert "shard 0: failed" in verdict.anomalies[0].detail  # the read's own details
