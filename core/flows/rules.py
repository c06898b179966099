"""Alert rules from a TOML file (thresholds per product), and alerts on transition.

The file (parsed with the standard library's tomllib):

    version = 1                      # optional; this format is 1
    [default]                        # the rules of borrowers of no product listed below
    window_days = 30                 # the window the rules read: 7, 15, 30 or 90
    coverage_below = 1.0             # debt-service coverage below this
    inflow_drop_below = 0.5          # 30-day inflow / its baseline's mean below this
    round_trip_share_above = 0.3     # share of inflow that came back from where money went
    largest_counterparty_share_above = 0.8
    linked_inflow_share_above = 0.5  # share of inflow from counterparties paying each other
    min_inflow_count = 10            # the share rules read nothing (hold not) with fewer
                                     # inflow transactions in the window (default 0: off)

    [products.agri-seasonal]         # a loan product (`loan.product`): overrides, key by key
    window_days = 90
    coverage_below = 0.6

A rule left out is off. A bad file is refused whole with RulesError, whose message names the
key at fault (`products.agri-seasonal.coverage_below: ...`); it never half-applies.

Alerts are their own stream: evaluating a borrower yields an Alert only when a rule starts to
hold (firing) or stops (cleared), per (rule, borrower, currency). A rule whose value is
undefined (nothing due, no baseline) does not hold.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from typing import Final

from core.flows.features import FlowProfile
from core.flows.model import BASELINE_WINDOW_DAYS, WINDOW_DAYS

COVERAGE_BELOW: Final = "coverage_below"
INFLOW_DROP_BELOW: Final = "inflow_drop_below"
ROUND_TRIP_SHARE_ABOVE: Final = "round_trip_share_above"
LARGEST_COUNTERPARTY_SHARE_ABOVE: Final = "largest_counterparty_share_above"
LINKED_INFLOW_SHARE_ABOVE: Final = "linked_inflow_share_above"
RULE_NAMES: Final = (
    COVERAGE_BELOW,
    INFLOW_DROP_BELOW,
    ROUND_TRIP_SHARE_ABOVE,
    LARGEST_COUNTERPARTY_SHARE_ABOVE,
    LINKED_INFLOW_SHARE_ABOVE,
)
_SHARES: Final = frozenset(RULE_NAMES) - {COVERAGE_BELOW, INFLOW_DROP_BELOW}
WINDOW_DAYS_KEY: Final = "window_days"
WINDOW_DAYS_DEFAULT: Final = 30
# A share of two or three payments is easily high: below this many inflow transactions in the
# window the share rules are undefined (found by the lending bench: a third of the borrowers
# fired largest_counterparty_share_above on their first day).
MIN_INFLOW_COUNT_KEY: Final = "min_inflow_count"
MIN_INFLOW_COUNT_MAX: Final = 1_000_000
PRODUCT_COUNT_MAX: Final = 1000
PRODUCT_NAME_LENGTH_MAX: Final = 256
THRESHOLD_MAX: Final = 1e6


class RulesError(ValueError):
    """A rules file refused; the message names the key at fault."""


@dataclass(frozen=True, slots=True)
class ProductRules:
    window_days: int
    thresholds: tuple[tuple[str, float], ...]  # (rule, threshold), rules on only
    min_inflow_count: int = 0  # the share rules' least inflow transactions in the window


@dataclass(frozen=True, slots=True)
class RuleSet:
    default: ProductRules
    products: tuple[tuple[str, ProductRules], ...]

    def for_product(self, product: str | None) -> ProductRules:
        return next((rules for name, rules in self.products if name == product), self.default)


@dataclass(frozen=True, slots=True)
class Alert:
    rule: str
    partition_key: str
    currency: str
    window_days: int
    value: float | None  # the rule's value when it changed (None: undefined)
    threshold: float
    at_ns: int
    firing: bool  # True: the rule started to hold; False: it cleared


AlertKey = tuple[str, str, str]  # (rule, borrower, currency)


@dataclass(frozen=True, slots=True)
class Reading:
    window_days: int
    value: float | None
    threshold: float
    holds: bool


def parse_rules(text: str) -> RuleSet:
    """The rule set of a rules file's text; RulesError naming the key at fault."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RulesError(f"not TOML: {error}") from None
    unknown = sorted(set(document) - {"version", "default", "products"})
    if unknown:
        raise RulesError(f"{unknown[0]}: unknown key (version, default, products)")
    if document.get("version", 1) != 1 or type(document.get("version", 1)) is not int:
        raise RulesError(f"version: {document['version']!r} is not 1")
    default_table = _table(document.get("default", {}), "default")
    default = _product_rules(default_table, "default")
    products_table = _table(document.get("products", {}), "products")
    if len(products_table) > PRODUCT_COUNT_MAX:
        raise RulesError(f"products: more than {PRODUCT_COUNT_MAX} products")
    products = []
    for name in sorted(products_table):
        where = f"products.{name}"
        if not 0 < len(name) <= PRODUCT_NAME_LENGTH_MAX:
            raise RulesError(f"{where}: a product name is 1 to {PRODUCT_NAME_LENGTH_MAX} chars")
        table = _table(products_table[name], where)
        products.append((name, _product_rules({**default_table, **table}, where)))
    return RuleSet(default, tuple(products))


def _table(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise RulesError(f"{where}: is not a table")
    return value


def _product_rules(table: dict[str, object], where: str) -> ProductRules:
    thresholds = []
    for key in sorted(table):
        value = table[key]
        if key == WINDOW_DAYS_KEY:
            if type(value) is not int or value not in WINDOW_DAYS:
                raise RulesError(f"{where}.{key}: {value!r} is not one of {WINDOW_DAYS}")
            continue
        if key == MIN_INFLOW_COUNT_KEY:
            if type(value) is not int or not 0 <= value <= MIN_INFLOW_COUNT_MAX:
                raise RulesError(
                    f"{where}.{key}: {value!r} is not a whole number 0..{MIN_INFLOW_COUNT_MAX}"
                )
            continue
        if key not in RULE_NAMES:
            raise RulesError(f"{where}.{key}: unknown rule ({', '.join(RULE_NAMES)})")
        thresholds.append((key, _threshold(value, key, f"{where}.{key}")))
    window_days = table.get(WINDOW_DAYS_KEY, WINDOW_DAYS_DEFAULT)
    min_inflow_count = table.get(MIN_INFLOW_COUNT_KEY, 0)
    assert isinstance(window_days, int) and isinstance(min_inflow_count, int)  # for mypy
    return ProductRules(window_days, tuple(thresholds), min_inflow_count)


def _threshold(value: object, rule: str, where: str) -> float:
    if type(value) not in (int, float):
        raise RulesError(f"{where}: {value!r} is not a number")
    assert isinstance(value, int | float)  # for mypy
    number = float(value)
    upper = 1.0 if rule in _SHARES else THRESHOLD_MAX
    if not (math.isfinite(number) and 0 <= number <= upper):
        raise RulesError(f"{where}: {value!r} is not within 0..{upper:g}")
    return number


def readings(rule_set: RuleSet, profile: FlowProfile | None) -> dict[AlertKey, Reading]:
    """Every rule on for the borrower's product, per currency of its profile."""
    if profile is None:
        return {}
    rules = rule_set.for_product(profile.product)
    found = {}
    for rule, threshold in rules.thresholds:
        for currency in sorted({window.currency for window in profile.windows}):
            window_days, value = _value(rule, profile, currency, rules)
            holds = value is not None and (
                value < threshold
                if rule in (COVERAGE_BELOW, INFLOW_DROP_BELOW)
                else value > threshold
            )
            key = (rule, profile.partition_key, currency)
            found[key] = Reading(window_days, value, threshold, holds)
    return found


def _value(
    rule: str, profile: FlowProfile, currency: str, rules: ProductRules
) -> tuple[int, float | None]:
    if rule == INFLOW_DROP_BELOW:
        baseline = profile.baseline(currency)
        return BASELINE_WINDOW_DAYS, None if baseline is None else baseline.ratio
    window_days = rules.window_days
    window = profile.window(window_days, currency)
    if window is None:
        return window_days, None
    if rule == COVERAGE_BELOW:
        return window_days, window.coverage
    if window.inflow_count < rules.min_inflow_count:  # a share of too few payments
        return window_days, None
    if rule == ROUND_TRIP_SHARE_ABOVE:
        return window_days, window.round_trip_share
    if rule == LARGEST_COUNTERPARTY_SHARE_ABOVE:
        return window_days, window.largest_counterparty_share
    return window_days, window.linked_inflow_share


Active = dict[AlertKey, tuple[int, float]]  # what fired: its window and threshold


def transitions(active: Active, found: dict[AlertKey, Reading], at_ns: int) -> list[Alert]:
    """The alerts that changed, updating active in place: a rule active before and not read
    now (the product changed, the profile is gone) clears with what it fired with."""
    alerts = []
    for key in sorted(set(active) | set(found)):
        reading = found.get(key)
        holds = reading is not None and reading.holds
        if holds == (key in active):
            continue
        rule, borrower, currency = key
        if reading is not None:
            window_days, threshold = reading.window_days, reading.threshold
        else:
            window_days, threshold = active[key]
        value = None if reading is None else reading.value
        alerts.append(Alert(rule, borrower, currency, window_days, value, threshold, at_ns, holds))
        if holds:
            active[key] = (window_days, threshold)
        else:
            del active[key]
    return alerts
