"""One borrower's flows of one UTC day in one currency: the engine's daily bucket.

A bucket keeps sums and counts, and the inflow and outflow of each of at most
counterparty_per_day_max counterparties: the first that many the day's flows name, in the
order they arrive. Money of any further counterparty that day is kept in the day's totals and
in its overflow sums, never attributed (the profile says `counterparties_truncated`), so a
borrower paid by thousands of people a day costs a bounded bucket. Which counterparties got
in depends on the arrival order only on such days.
"""

from __future__ import annotations

from core.flows.attribution import Movement, MovementKind
from core.invariant import check

_SUMS = ("inflow", "outflow", "own", "disbursed", "repaid", "overflow_inflow", "overflow_outflow")
_COUNTS = ("inflow_count", "outflow_count", "transaction_count")


class DayTotals:
    __slots__ = (*_SUMS, *_COUNTS, "counterparties")

    def __init__(self) -> None:
        self.inflow = self.outflow = self.own = self.disbursed = self.repaid = 0
        self.overflow_inflow = self.overflow_outflow = 0
        self.inflow_count = self.outflow_count = self.transaction_count = 0
        self.counterparties: dict[str, list[int]] = {}  # name -> [inflow, outflow]

    def add(self, movements: list[Movement], counterparty_max: int) -> None:
        """One transaction's movements of this borrower in this currency."""
        check(bool(movements), "a transaction adds at least one movement to a bucket")
        self.transaction_count += 1
        kinds = {movement.kind for movement in movements}
        self.inflow_count += MovementKind.INFLOW in kinds
        self.outflow_count += MovementKind.OUTFLOW in kinds
        for movement in movements:
            self._add(movement, counterparty_max)

    def _add(self, movement: Movement, counterparty_max: int) -> None:
        kind, amount = movement.kind, movement.amount
        if kind is MovementKind.OWN:
            self.own += amount
        elif kind is MovementKind.DISBURSEMENT:
            self.disbursed += amount
        elif kind is MovementKind.REPAYMENT:
            self.repaid += amount
        else:
            inflowing = kind is MovementKind.INFLOW
            if inflowing:
                self.inflow += amount
            else:
                self.outflow += amount
            entry = self.counterparties.get(movement.counterparty)
            if entry is None and len(self.counterparties) < counterparty_max:
                entry = self.counterparties[movement.counterparty] = [0, 0]
            if entry is not None:
                entry[0 if inflowing else 1] += amount
            elif inflowing:
                self.overflow_inflow += amount
            else:
                self.overflow_outflow += amount

    def to_json(self) -> dict[str, object]:
        encoded: dict[str, object] = {name: getattr(self, name) for name in (*_SUMS, *_COUNTS)}
        encoded["counterparties"] = {name: list(e) for name, e in self.counterparties.items()}
        return encoded

    @staticmethod
    def from_json(encoded: dict[str, object], counterparty_max: int) -> DayTotals:
        """Raises ValueError (or KeyError, TypeError) on anything but what to_json made."""
        totals = DayTotals()
        if set(encoded) != {*_SUMS, *_COUNTS, "counterparties"}:
            raise ValueError(f"a bucket has the fields {sorted(encoded)}")
        for name in (*_SUMS, *_COUNTS):
            setattr(totals, name, _natural(encoded[name]))
        counterparties = encoded["counterparties"]
        if not isinstance(counterparties, dict) or len(counterparties) > counterparty_max:
            raise ValueError("a bucket's counterparties are not a bounded object")
        for name, entry in counterparties.items():
            if not (isinstance(entry, list) and len(entry) == 2):
                raise ValueError(f"counterparty {name!r} is not [inflow, outflow]")
            totals.counterparties[str(name)] = [_natural(entry[0]), _natural(entry[1])]
        return totals


def _natural(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a count or an amount")
    return value
