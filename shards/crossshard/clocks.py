"""The clocks of the cross-shard protocol: the skew between processes it is safe under, and
the deadline every held piece of an open cross-shard hold gets (docs/cross-shard.md, "Clocks").

Three clocks meet in a hold's decision: the gateway's sets a participant's short deadline D
(now + P, P the prepare deadline) and the decision's limit (now + P/2), the coordinator's
refuses a decision past that limit, the participant's asks at D. A decision is heard by a
participant that asks at D as long as the participant's clock is less than P/2 ahead of the
coordinator's (less the time a decision takes from its check to its write). The cluster's bound
is half of that, P/4 between any two processes (7.5 s at the default P = 30 s); the other P/4 is
for delays. The gateway reads each participant's and coordinator's clock in the re-arm round
before a decision and refuses to decide (retryable) when a participant's is ahead of its
coordinator's by more than the bound.

Whatever the clocks say, atomicity never rests on them: a participant settles a piece only as
its coordinator answers, and the coordinator's single writer orders every decision and every
answer. A clock beyond the bound can only make a participant stop waiting too early for a
decision in progress; it then asks again within HOLD_REASK_S, so every held piece is asked
about until its hold is decided.
"""

from __future__ import annotations

import os

# Seconds after which a participant asks again about a piece of an open cross-shard hold whose
# expiry is later (or that has none): the longest a decision whose news was lost (the gateway
# died after it, the participant asked too early) stays unheard. Each open hold costs each of
# its participants one question and one DEADLINE record per interval. All processes of a
# cluster should agree on it; tests shorten it with TALLY_HOLD_REASK_S.
HOLD_REASK_S = max(1, int(os.environ.get("TALLY_HOLD_REASK_S", "3600")))


def clock_skew_max_ns(prepare_deadline_s: int) -> int:
    """The largest skew between two processes' clocks the protocol is documented safe under: a
    quarter of the prepare deadline."""
    return prepare_deadline_s * 250_000_000


def open_hold_deadline(now_ns: int, expires_at_ns: int) -> int:
    """A participant's deadline for its piece of an open hold expiring at expires_at_ns (0:
    never): the hold's expiry, or HOLD_REASK_S from now if sooner. Never 0: every held piece is
    asked about again."""
    reask_ns = now_ns + HOLD_REASK_S * 1_000_000_000
    return min(expires_at_ns, reask_ns) if expires_at_ns else reask_ns
