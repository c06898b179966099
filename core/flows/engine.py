"""FlowEngine: the cash-flow profiles of every borrower, kept incrementally in daily buckets.

Time is the flows' own (their commit timestamps), never the wall clock: the engine's day is
the latest UTC day of any flow (or `advance`). It keeps, per borrower, the RETENTION_DAYS
days ending on its day; as its day moves on, older days are dropped, and a borrower left
with no day and no loan account is forgotten. Flows of different shards arrive out of order:
a flow of a day still retained is added to that day's bucket wherever it comes in the stream
(sums do not care about order); a flow of a day already dropped is late: counted
(`late_flow_count`) and not added. Profiles are read at any time (`profile`), checkpoints
are exact (`snapshot`, `restore`).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from core.flows import features, rules
from core.flows.attribution import Movement, movements, paying_pairs
from core.flows.buckets import DayTotals
from core.flows.features import Baseline, FlowProfile, PortfolioSummary, WindowFeatures
from core.flows.model import (
    BASELINE_WINDOW_COUNT,
    BASELINE_WINDOW_COUNT_MIN,
    BASELINE_WINDOW_DAYS,
    RETENTION_DAYS,
    WINDOW_DAYS,
    AccountInfo,
    EngineConfig,
    Flow,
    day_of,
)
from core.flows.schedule import LoanAccount, Schedule, loan_account
from core.slots import partition_key

SNAPSHOT_VERSION: Final = 1
PAIR_RETENTION_DAYS: Final = max(WINDOW_DAYS)
"""A pair of counterparties that paid each other is kept this long after it last did."""

Days = dict[int, dict[str, DayTotals]]  # day -> currency -> bucket


@dataclass(frozen=True, slots=True)
class Footprint:
    borrower_count: int  # partition keys with a retained day
    day_count: int
    bucket_count: int  # (borrower, day, currency)
    counterparty_entry_max: int  # in any one bucket
    oldest_day: int | None
    pair_count: int
    loan_account_count: int
    active_alert_count: int


class SnapshotError(ValueError):
    """Bytes that are not a snapshot this engine made; the message says what is wrong."""


class FlowEngine:
    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self._funding = frozenset(self.config.funding_account_ids)
        self.day: int | None = None
        self.late_flow_count = 0
        self.pair_overflow_count = 0
        self._books: dict[str, Days] = {}
        self._loans: dict[str, LoanAccount] = {}
        self._loans_by_key: dict[str, set[str]] = {}
        self._pairs: dict[str, dict[str, int]] = {}  # key -> other key -> last day (both ways)
        self._pair_count = 0
        self._active: dict[str, rules.Active] = {}  # by borrower

    # ---- input ----

    def add_account(self, info: AccountInfo) -> None:
        """Remembers a loan account (other accounts need no memory)."""
        loan = loan_account(info)
        if loan is not None:
            self._put_loan(loan)

    def forget_account(self, account_id: str) -> None:
        """A closed loan account: its schedule stops counting."""
        loan = self._loans.pop(account_id, None)
        if loan is not None:
            key = _key_of(account_id)
            self._loans_by_key[key].discard(account_id)
            if not self._loans_by_key[key]:
                del self._loans_by_key[key]

    def add_flow(self, flow: Flow) -> bool:
        """Adds a flow to its borrowers' buckets; False if it is late (its day is dropped)."""
        day = day_of(flow.timestamp_ns)
        self.advance(flow.timestamp_ns)
        if day < self._horizon():
            self.late_flow_count += 1
            return False
        grouped: dict[tuple[str, str], list[Movement]] = {}
        for movement in movements(flow, self.is_loan, self._funding):
            grouped.setdefault((movement.borrower, movement.currency), []).append(movement)
        for (borrower, currency), found in grouped.items():
            buckets = self._books.setdefault(borrower, {}).setdefault(day, {})
            bucket = buckets.setdefault(currency, DayTotals())
            bucket.add(found, self.config.counterparty_per_day_max)
        if day > self._pair_horizon():
            for pair in sorted(paying_pairs(flow)):
                self._record_pair(*pair, day)
        return True

    def advance(self, timestamp_ns: int) -> None:
        """Moves the engine's day on to a timestamp's (never back), dropping what falls out."""
        day = day_of(timestamp_ns)
        if self.day is not None and day <= self.day:
            return
        self.day = day
        horizon = self._horizon()
        for key in list(self._books):
            days = self._books[key]
            for old in [d for d in days if d < horizon]:
                del days[old]
            if not days:
                del self._books[key]
        pair_horizon = self._pair_horizon()
        for key in list(self._pairs):
            others = self._pairs[key]
            for other in [o for o, last in others.items() if last <= pair_horizon]:
                del others[other]
                self._pair_count -= key < other
            if not others:
                del self._pairs[key]

    def is_loan(self, account_id: str) -> bool:
        return account_id in self._loans

    def _horizon(self) -> int:
        """The oldest day kept."""
        return -(2**62) if self.day is None else self.day - RETENTION_DAYS + 1

    def _pair_horizon(self) -> int:
        """Pairs last seen on or before this day are dropped."""
        return -(2**62) if self.day is None else self.day - PAIR_RETENTION_DAYS

    def _put_loan(self, loan: LoanAccount) -> None:
        self._loans[loan.account_id] = loan
        self._loans_by_key.setdefault(_key_of(loan.account_id), set()).add(loan.account_id)

    def _record_pair(self, first: str, second: str, day: int) -> None:
        known = self._pairs.get(first, {}).get(second)
        if known is None and self._pair_count >= self.config.pair_count_max:
            self.pair_overflow_count += 1
            return
        if known is None:
            self._pair_count += 1
        last = day if known is None else max(day, known)
        self._pairs.setdefault(first, {})[second] = last
        self._pairs.setdefault(second, {})[first] = last

    # ---- profiles ----

    def borrowers(self) -> list[str]:
        """Every partition key the engine has a profile of (flows or loan accounts)."""
        return sorted(set(self._books) | set(self._loans_by_key))

    def loans_of(self, key: str) -> list[LoanAccount]:
        return [self._loans[a] for a in sorted(self._loans_by_key.get(key, ()))]

    def active_alerts(self, key: str) -> rules.Active:
        """The borrower's alerts active now (a copy): (rule, key, currency) -> (window, limit)."""
        return dict(self._active.get(key, {}))

    def footprint(self) -> Footprint:
        """What the engine holds, for its bounds' tests and the service's metrics."""
        buckets = [b for days in self._books.values() for bs in days.values() for b in bs.values()]
        oldest = min((d for days in self._books.values() for d in days), default=None)
        return Footprint(
            borrower_count=len(self._books),
            day_count=sum(len(days) for days in self._books.values()),
            bucket_count=len(buckets),
            counterparty_entry_max=max((len(b.counterparties) for b in buckets), default=0),
            oldest_day=oldest,
            pair_count=self._pair_count,
            loan_account_count=len(self._loans),
            active_alert_count=sum(len(active) for active in self._active.values()),
        )

    def paid_each_other_since(self, first: str, second: str, day: int) -> bool:
        """Whether the two counterparties paid each other (either way) on or after day."""
        last = self._pairs.get(first, {}).get(second)
        return last is not None and last >= day

    def profile(
        self,
        key: str,
        as_of_ns: int,
        window_days_wanted: Iterable[int] = WINDOW_DAYS,
        with_baselines: bool = True,
    ) -> FlowProfile | None:
        """The borrower's profile on the UTC day of as_of_ns; None if it has neither flows
        retained nor loan accounts. Only the windows wanted (and the baselines if asked): what
        evaluate's rules read, the rest left out (a day's close evaluates every borrower)."""
        days = self._books.get(key, {})
        loans = self.loans_of(key)
        if not days and not loans:
            return None
        as_of_day = day_of(as_of_ns)
        currencies = sorted({c for buckets in days.values() for c in buckets} | _currencies(loans))
        wanted = tuple(window_days_wanted)
        windows = []
        baselines = []
        for currency in currencies:
            series = sorted((d, b[currency]) for d, b in days.items() if currency in b)
            schedules = [loan.schedule for loan in loans if loan.currency == currency]
            for window_days in wanted:
                window = self._window(series, window_days, currency, as_of_day, schedules)
                windows.append(window)
            if with_baselines:
                baselines.append(_baseline(series, currency, as_of_day))
        product = next((loan.product for loan in loans if loan.product), None)
        return FlowProfile(key, as_of_ns, as_of_day, product, tuple(windows), tuple(baselines))

    def _rules_profile(
        self, rule_set: rules.RuleSet, key: str, as_of_ns: int
    ) -> FlowProfile | None:
        """The part of the borrower's profile its product's rules read."""
        loans = self.loans_of(key)
        product = next((loan.product for loan in loans if loan.product), None)
        product_rules = rule_set.for_product(product)
        on = {rule for rule, _ in product_rules.thresholds}
        # The window gives the currencies readings goes over, the baseline rule's too.
        windows = (product_rules.window_days,)
        return self.profile(key, as_of_ns, windows, rules.INFLOW_DROP_BELOW in on)

    def _window(
        self,
        series: list[tuple[int, DayTotals]],
        window_days: int,
        currency: str,
        end: int,
        schedules: list[Schedule | None],
    ) -> WindowFeatures:
        start = end - window_days + 1
        inside = [(day, bucket) for day, bucket in series if start <= day <= end]
        sums = {name: sum(getattr(b, name) for _, b in inside) for name in _WINDOW_SUMS}
        per_counterparty: dict[str, list[int]] = {}
        daily: dict[str, list[tuple[int, int, int]]] = {}
        for day, bucket in inside:
            for name, (inflow, outflow) in bucket.counterparties.items():
                entry = per_counterparty.setdefault(name, [0, 0])
                entry[0] += inflow
                entry[1] += outflow
                daily.setdefault(name, []).append((day, outflow, inflow))
        round_trip = sum(
            features.round_trip_amount(d, self.config.round_trip_days) for d in daily.values()
        )
        payers = {name for name, (inflow, _) in per_counterparty.items() if inflow}
        linked = sum(per_counterparty[n][0] for n in payers if self._linked(n, payers, start))
        due = sum(s.due(start, end) for s in schedules if s is not None)
        truncated = any(b.overflow_inflow or b.overflow_outflow for _, b in inside)
        return make_window(
            window_days,
            currency,
            start,
            end,
            sums,
            per_counterparty,
            due,
            truncated,
            round_trip,
            linked,
        )

    def _linked(self, name: str, payers: set[str], start: int) -> bool:
        """Whether name paid (or was paid by) another of payers on or after start: through
        the smaller of its pairs and the payers, so a hub of many pairs or a window of many
        payers costs the other's size."""
        pairs = self._pairs.get(name, {})
        if len(pairs) <= len(payers):
            return any(last >= start and o in payers for o, last in pairs.items())
        return any(self.paid_each_other_since(name, o, start) for o in payers if o != name)

    # ---- the portfolio and alerts ----

    def portfolio(self, as_of_ns: int, window_days: int = 30) -> PortfolioSummary:
        """The loan portfolio (partition keys with a loan account) on as_of_ns's day: the
        distribution of coverage over the window, per (borrower, currency) of its loans."""
        coverages: list[float] = []
        undefined = 0
        keys = sorted(self._loans_by_key)
        for key in keys:
            profile = self.profile(key, as_of_ns)
            loan_currencies = _currencies(self.loans_of(key))
            for window in profile.windows if profile else ():
                if window.window_days != window_days or window.currency not in loan_currencies:
                    continue
                if window.coverage is None:
                    undefined += 1
                else:
                    coverages.append(window.coverage)
        by_rule: dict[str, int] = {}
        for rule, _, _ in (key for active in self._active.values() for key in active):
            by_rule[rule] = by_rule.get(rule, 0) + 1
        return PortfolioSummary(
            as_of_ns,
            window_days,
            len(keys),
            features.coverage_counts(coverages),
            undefined,
            tuple(sorted(by_rule.items())),
            self.late_flow_count,
            self.pair_overflow_count,
        )

    def evaluate(
        self, rule_set: rules.RuleSet, as_of_ns: int, keys: Iterable[str] | None = None
    ) -> list[rules.Alert]:
        """Alert transitions of the given partition keys (by default every borrower, and every
        key with an alert active) on as_of_ns's day: an alert fires when its rule starts to
        hold and clears when it stops; nothing otherwise. Only borrowers (keys with a loan
        account) have alerts: another key's active alerts clear."""
        if keys is None:
            keys = set(self._loans_by_key) | set(self._active)
        found: list[rules.Alert] = []
        for key in sorted(set(keys)):
            profile = (
                self._rules_profile(rule_set, key, as_of_ns) if key in self._loans_by_key else None
            )
            readings = rules.readings(rule_set, profile)
            active = self._active.get(key, {})
            found += rules.transitions(active, readings, as_of_ns)
            if active:
                self._active[key] = active
            else:
                self._active.pop(key, None)
        return found

    # ---- checkpoints ----

    def snapshot(self) -> bytes:
        """The engine's whole state, canonical: the same state always gives the same bytes."""
        return json.dumps(self._state(), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def restore(data: bytes) -> FlowEngine:
        """The engine a snapshot was made of; SnapshotError if the bytes are not one."""
        try:
            state = json.loads(data)
            if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION:
                raise SnapshotError(f"not a version {SNAPSHOT_VERSION} flow engine snapshot")
            return _engine_of(state)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, SnapshotError):
                raise
            raise SnapshotError(f"not a flow engine snapshot: {error!r}") from None

    def _state(self) -> dict[str, object]:
        config = self.config
        return {
            "version": SNAPSHOT_VERSION,
            "config": {
                "funding_account_ids": list(config.funding_account_ids),
                "counterparty_per_day_max": config.counterparty_per_day_max,
                "pair_count_max": config.pair_count_max,
                "round_trip_days": config.round_trip_days,
            },
            "day": self.day,
            "late_flow_count": self.late_flow_count,
            "pair_overflow_count": self.pair_overflow_count,
            "books": {
                key: {
                    str(day): {c: bucket.to_json() for c, bucket in buckets.items()}
                    for day, buckets in days.items()
                }
                for key, days in self._books.items()
            },
            "loans": [_loan_json(self._loans[a]) for a in sorted(self._loans)],
            "pairs": sorted(
                [key, other, last]
                for key, others in self._pairs.items()
                for other, last in others.items()
                if key < other
            ),
            "active": sorted(
                [*key, *fired] for active in self._active.values() for key, fired in active.items()
            ),
        }


_WINDOW_SUMS = (
    "inflow", "outflow", "own", "disbursed", "repaid", "inflow_count", "outflow_count",
    "transaction_count",
)  # fmt: skip


def make_window(
    window_days: int,
    currency: str,
    start: int,
    end: int,
    sums: dict[str, int],
    per_counterparty: dict[str, list[int]],
    due: int,
    truncated: bool,
    round_trip: int,
    linked: int,
) -> WindowFeatures:
    """The window's features from its sums (shared with the reference recomputation)."""
    inflow = sums["inflow"]
    largest = min(
        (name for name, (amount, _) in per_counterparty.items() if amount),
        key=lambda name: (-per_counterparty[name][0], name),
        default=None,
    )
    largest_share = (
        None if largest is None else features.share(per_counterparty[largest][0], inflow)
    )
    return WindowFeatures(
        window_days=window_days,
        currency=currency,
        start_day=start,
        end_day=end,
        inflow=inflow,
        outflow=sums["outflow"],
        net_flow=inflow - sums["outflow"],
        inflow_count=sums["inflow_count"],
        outflow_count=sums["outflow_count"],
        transaction_count=sums["transaction_count"],
        own_transfer_amount=sums["own"],
        disbursed=sums["disbursed"],
        debt_service_paid=sums["repaid"],
        debt_service_due=due,
        coverage=features.share(inflow, due),
        counterparty_count=len(per_counterparty),
        largest_counterparty=largest,
        largest_counterparty_share=largest_share,
        counterparties_truncated=truncated,
        round_trip_amount=round_trip,
        round_trip_share=features.share(round_trip, inflow),
        linked_inflow_amount=linked,
        linked_inflow_share=features.share(linked, inflow),
    )


def baseline_windows(first_day: int | None, as_of_day: int) -> list[tuple[int, int]]:
    """The previous whole 30-day windows (start, end) that start on or after the borrower's
    first retained day, newest first."""
    found = []
    for back in range(1, BASELINE_WINDOW_COUNT + 1):
        end = as_of_day - BASELINE_WINDOW_DAYS * back
        start = end - BASELINE_WINDOW_DAYS + 1
        if first_day is not None and start >= first_day:
            found.append((start, end))
    return found


def _baseline(series: list[tuple[int, DayTotals]], currency: str, as_of_day: int) -> Baseline:
    # Prefix sums over the (sorted) series: each window's inflow by two bisections, not a pass
    # over every retained day per window.
    days = [day for day, _ in series]
    totals = [0]
    for _, bucket in series:
        totals.append(totals[-1] + bucket.inflow)

    def inflow(start: int, end: int) -> int:
        return totals[bisect.bisect_right(days, end)] - totals[bisect.bisect_left(days, start)]

    first_day = series[0][0] if series else None
    previous = [inflow(s, e) for s, e in baseline_windows(first_day, as_of_day)]
    current = inflow(as_of_day - BASELINE_WINDOW_DAYS + 1, as_of_day)
    return features.baseline(
        currency, BASELINE_WINDOW_DAYS, current, previous, BASELINE_WINDOW_COUNT_MIN
    )


def _currencies(loans: list[LoanAccount]) -> set[str]:
    return {loan.currency for loan in loans}


def _key_of(account_id: str) -> str:
    return partition_key(account_id)


def _loan_json(loan: LoanAccount) -> list[object]:
    schedule = loan.schedule
    encoded = None
    if schedule is not None:
        encoded = [
            schedule.installment,
            schedule.first_due_day,
            schedule.period_days,
            schedule.installment_count,
        ]
    return [loan.account_id, loan.currency, loan.product, encoded, loan.problem]


def _loan_of(encoded: list[Any]) -> LoanAccount:
    account_id, currency, product, schedule, problem = encoded
    if schedule is not None:
        schedule = Schedule(*(_integer(v) for v in schedule))
    return LoanAccount(
        _text(account_id), _text(currency), _optional(product), schedule, _optional(problem)
    )


def _engine_of(state: dict[str, Any]) -> FlowEngine:
    config = state["config"]
    engine = FlowEngine(
        EngineConfig(
            funding_account_ids=tuple(_text(a) for a in config["funding_account_ids"]),
            counterparty_per_day_max=_integer(config["counterparty_per_day_max"]),
            pair_count_max=_integer(config["pair_count_max"]),
            round_trip_days=_integer(config["round_trip_days"]),
        )
    )
    engine.day = None if state["day"] is None else _integer(state["day"])
    engine.late_flow_count = _integer(state["late_flow_count"])
    engine.pair_overflow_count = _integer(state["pair_overflow_count"])
    limit = engine.config.counterparty_per_day_max
    for key, days in state["books"].items():
        engine._books[_text(key)] = {
            int(day): {_text(c): DayTotals.from_json(b, limit) for c, b in buckets.items()}
            for day, buckets in days.items()
        }
    for encoded in state["loans"]:
        engine._put_loan(_loan_of(encoded))
    for first, second, last in state["pairs"]:
        engine._pairs.setdefault(_text(first), {})[_text(second)] = _integer(last)
        engine._pairs.setdefault(_text(second), {})[_text(first)] = _integer(last)
        engine._pair_count += 1
    for rule, borrower, currency, window_days, threshold in state["active"]:
        key = (_text(rule), _text(borrower), _text(currency))
        engine._active.setdefault(key[1], {})[key] = (_integer(window_days), float(threshold))
    return engine


def _integer(value: object) -> int:
    if type(value) is not int:
        raise ValueError(f"{value!r} is not an integer")
    return value


def _text(value: object) -> str:
    if type(value) is not str:
        raise ValueError(f"{value!r} is not text")
    return value


def _optional(value: object) -> str | None:
    return None if value is None else _text(value)
