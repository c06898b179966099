"""A transaction's postings against its legs: the postings core.state writes for each kind of
transaction (expected_postings), compared with those recorded, each difference a finding."""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from core.audit.findings import About, FindingKind, FindingLog
from core.model import HELD_KINDS, Kind
from core.store.audit import (
    P_ACCOUNT,
    P_PENDING,
    P_POSTED,
    P_SEQUENCE,
    P_SIDE,
    P_TIME,
    P_TRANSACTION,
    T_APPLIED,
    T_ID,
    T_KIND,
    T_TARGET,
    T_TIME,
)

# Kinds whose legs post as they are (abort markers, reversal marks and a piece's deadline
# records have no legs, so no postings).
POSTED_KINDS: Final = frozenset(
    {Kind.ORDINARY, Kind.REVERSAL, Kind.COMMIT, Kind.ABORT, Kind.REVERSAL_MARK, Kind.DEADLINE}
)


def posting_ids(row: Any) -> dict[str, Any]:
    """A posting row's ids, as FindingLog.add takes them."""
    return {
        "posting": row[P_SEQUENCE],
        "transaction_id": row[P_TRANSACTION],
        "account_id": row[P_ACCOUNT],
    }


# ---- a transaction's postings against its legs ----

# (account, side "D"/"C", posted amount, pending delta, currency)
ExpectedPosting = tuple[str, str, int, int, str]
DEBIT_SIGN: Final = {"D": 1, "C": -1}


def parse_legs(text: str) -> list[tuple[str, str, int, str]]:
    """(account, side, amount, currency) of core.journal.encode_legs text; ValueError if bad."""
    if not text:
        return []
    legs = []
    for part in text.split(","):
        side, account, amount, currency = part.split(" ")
        if side not in DEBIT_SIGN:
            raise ValueError(f"side {side!r}")
        legs.append((account, side, int(amount), currency))
    return legs


def _sum_by_key(legs: list[tuple[str, str, int, str]]) -> dict[tuple[str, str, str], int]:
    sums: dict[tuple[str, str, str], int] = {}
    for account, side, amount, currency in legs:
        key = (account, side, currency)
        sums[key] = sums.get(key, 0) + amount
    return sums


def expected_postings(kind: int, applied_text: str, held_text: str | None) -> list[ExpectedPosting]:
    """The postings core.state writes for a transaction, from its recorded legs (and, for a
    post of a hold, the hold's legs). ValueError when the legs cannot be read."""
    applied = parse_legs(applied_text)
    if kind in POSTED_KINDS:
        return [(account, side, amount, 0, cur) for account, side, amount, cur in applied]
    if kind in HELD_KINDS:
        return [(account, side, 0, amount, cur) for account, side, amount, cur in applied]
    if kind in (Kind.VOID_PENDING, Kind.EXPIRY):
        held = _sum_by_key(applied)
        return [(account, side, 0, -amount, cur) for (account, side, cur), amount in held.items()]
    if kind == Kind.POST_PENDING:
        if held_text is None:
            raise ValueError("the hold it posts is not a recorded hold")
        # Every key held is released (posted: its applied amount, or 0). A piece of a
        # cross-shard hold posts its share, balanced by its clearing piece, which may be on a
        # key it did not hold (a piece netting to zero, or the clearing side flipped): posted
        # as it is, nothing released.
        posted = _sum_by_key(applied)
        held = _sum_by_key(parse_legs(held_text))
        expected = [
            (account, side, posted.get((account, side, cur), 0), -amount, cur)
            for (account, side, cur), amount in held.items()
        ]
        expected += [
            (account, side, amount, 0, cur)
            for (account, side, cur), amount in posted.items()
            if (account, side, cur) not in held
        ]
        return expected
    raise ValueError(f"kind {kind} is not a kind of transaction")


def check_transaction_postings(
    log: FindingLog, block: int, transaction: Any, actual: list[Any], held: dict[str, str]
) -> None:
    """Compare a transaction's postings with what its legs say they must be."""
    transaction_id = transaction[T_ID]
    try:
        expected = expected_postings(
            transaction[T_KIND], transaction[T_APPLIED], held.get(transaction[T_TARGET])
        )
    except ValueError as error:
        log.add(
            FindingKind.LEGS_UNREADABLE,
            About.TRANSACTION,
            f"its legs cannot be checked: {error}",
            block=block,
            transaction_id=transaction_id,
        )
        return
    if not _is_balanced_pair(expected):
        _check_balanced(log, block, transaction_id, expected)
    timestamp_ns = transaction[T_TIME]
    if not _postings_are(actual, expected, timestamp_ns):
        _match_postings(log, block, transaction_id, timestamp_ns, expected, actual)


def _is_balanced_pair(expected: list[ExpectedPosting]) -> bool:
    """The common case, decided without building sums: one debit and one credit alike."""
    if len(expected) != 2:
        return False
    first, second = expected
    return first[1] != second[1] and first[2:] == second[2:]


def _postings_are(actual: list[Any], expected: list[ExpectedPosting], timestamp_ns: int) -> bool:
    """Whether the postings are exactly the expected ones, in order (the fast path)."""
    if len(actual) != len(expected):
        return False
    for row, leg in zip(actual, expected, strict=True):
        if (
            row[P_ACCOUNT] != leg[0]
            or row[P_SIDE] != leg[1]
            or row[P_POSTED] != leg[2]
            or row[P_PENDING] != leg[3]
            or row[P_TIME] != timestamp_ns
        ):
            return False
    return True


def _check_balanced(
    log: FindingLog, block: int, transaction_id: str, expected: list[ExpectedPosting]
) -> None:
    net: dict[str, list[int]] = {}
    for _account, side, posted, pending, currency in expected:
        sums = net.setdefault(currency, [0, 0])
        sums[0] += DEBIT_SIGN[side] * posted
        sums[1] += DEBIT_SIGN[side] * pending
    for currency, (posted, pending) in sorted(net.items()):
        if posted or pending:
            log.add(
                FindingKind.TRANSACTION_UNBALANCED,
                About.TRANSACTION,
                f"unbalanced in {currency}: debits minus credits {posted} posted, "
                f"{pending} pending",
                0,
                posted or pending,
                block=block,
                transaction_id=transaction_id,
                currency=currency,
            )


def _match_postings(
    log: FindingLog,
    block: int,
    transaction_id: str,
    timestamp_ns: int,
    expected: list[ExpectedPosting],
    actual: list[Any],
) -> None:
    """Pair postings with legs by (account, side), in order, and name every difference."""
    remaining: dict[tuple[str, str], deque[ExpectedPosting]] = {}
    for leg in expected:
        remaining.setdefault((leg[0], leg[1]), deque()).append(leg)
    for row in actual:
        legs = remaining.get((row[P_ACCOUNT], row[P_SIDE]))
        if not legs:
            log.add(
                FindingKind.POSTING_NOT_A_LEG,
                About.POSTING,
                f"not a leg of transaction {transaction_id}: {_side_name(row[P_SIDE])} "
                f"posted {row[P_POSTED]}, pending {row[P_PENDING]}",
                block=block,
                **posting_ids(row),
            )
            continue
        leg = legs.popleft()
        for name, found, wanted in (
            ("posted_amount", row[P_POSTED], leg[2]),
            ("pending_delta", row[P_PENDING], leg[3]),
            ("timestamp_ns", row[P_TIME], timestamp_ns),
        ):
            if found != wanted:
                log.add(
                    FindingKind.POSTING_DIFFERS_FROM_LEG,
                    About.POSTING,
                    f"{name} {found}, expected {wanted} (from transaction {transaction_id})",
                    wanted,
                    found,
                    block=block,
                    currency=leg[4],
                    **posting_ids(row),
                )
    for legs in remaining.values():
        for account, side, posted, pending, currency in legs:
            log.add(
                FindingKind.LEG_WITHOUT_POSTING,
                About.TRANSACTION,
                f"no posting for its {_side_name(side)} of {account} "
                f"(posted {posted}, pending {pending} {currency})",
                f"a posting to {account}",
                "none",
                block=block,
                transaction_id=transaction_id,
                account_id=account,
                currency=currency,
            )


def _side_name(side: str) -> str:
    return "debit" if side == "D" else "credit"
