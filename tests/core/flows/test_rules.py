"""Alert rules from TOML and alerts on transition (core.flows.rules)."""

from __future__ import annotations

import pytest

from core.flows.engine import FlowEngine
from core.flows.model import NS_PER_DAY, AccountInfo, Flow
from core.flows.model import day_of_date as day
from core.flows.rules import Alert, ProductRules, RulesError, parse_rules
from core.model import Leg

CONFIG = """
version = 1
[default]
coverage_below = 1.0
largest_counterparty_share_above = 0.9

[products.agri]
window_days = 90
coverage_below = 0.5
"""
D0 = day("2026-03-01")


def loan(key: str, product: str | None = None) -> AccountInfo:
    metadata = [
        ("loan.first_due", "2026-03-05"),
        ("loan.installment", "1000"),
        ("loan.installments", "12"),
        ("loan.kind", "loan"),
    ]
    if product:
        metadata.append(("loan.product", product))
    return AccountInfo(f"{key}/loan", "USD", 9, tuple(sorted(metadata)))


def pay(engine: FlowEngine, on: int, source: str, destination: str, amount: int) -> None:
    legs = (Leg(source, True, amount, "USD"), Leg(destination, False, amount, "USD"))
    engine.add_flow(Flow(f"t{on}{source}{amount}", on * NS_PER_DAY, 1, (), legs))


def test_products_override_the_default_key_by_key() -> None:
    rules = parse_rules(CONFIG)
    assert rules.default == ProductRules(
        30, (("coverage_below", 1.0), ("largest_counterparty_share_above", 0.9))
    )
    assert rules.for_product("agri") == ProductRules(
        90, (("coverage_below", 0.5), ("largest_counterparty_share_above", 0.9))
    )
    assert rules.for_product("unknown") == rules.default
    assert parse_rules("") == parse_rules("[default]\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[default\n", "not TOML"),
        ("colour = 1\n", "colour: unknown key"),
        ("version = 2\n", "version: 2 is not 1"),
        ("default = 3\n", "default: is not a table"),
        ("[default]\ncoverage_over = 1.0\n", "default.coverage_over: unknown rule"),
        ("[default]\ncoverage_below = 'low'\n", "default.coverage_below: 'low' is not a number"),
        ("[default]\ncoverage_below = true\n", "default.coverage_below: True is not a number"),
        ("[default]\ncoverage_below = -1\n", "default.coverage_below: -1 is not within"),
        ("[default]\ncoverage_below = nan\n", "default.coverage_below: nan is not within"),
        ("[default]\nround_trip_share_above = 1.5\n", "round_trip_share_above: 1.5 is not with"),
        ("[default]\nwindow_days = 31\n", "default.window_days: 31 is not one of"),
        ("[products.agri]\nwindow_days = 7.0\n", "products.agri.window_days: 7.0 is not"),
        ("[products]\nagri = 1\n", "products.agri: is not a table"),
        ("[default]\nmin_inflow_count = 2.5\n", "default.min_inflow_count: 2.5 is not a whole"),
        ("[default]\nmin_inflow_count = -1\n", "default.min_inflow_count: -1 is not a whole"),
    ],
)
def test_a_bad_file_is_refused_naming_the_key_at_fault(text: str, message: str) -> None:
    with pytest.raises(RulesError) as refused:
        parse_rules(text)
    assert message in str(refused.value)


def test_an_alert_fires_once_when_its_rule_starts_to_hold_and_clears_when_it_stops() -> None:
    rules = parse_rules(CONFIG)
    engine = FlowEngine()
    engine.add_account(loan("b"))
    at = day("2026-03-06") * NS_PER_DAY
    pay(engine, D0, "c/deposit", "b/deposit", 600)  # 600 in, 1000 due: coverage 0.6
    fired = Alert("coverage_below", "b", "USD", 30, 0.6, 1.0, at, True)
    concentrated = Alert("largest_counterparty_share_above", "b", "USD", 30, 1.0, 0.9, at, True)
    assert engine.evaluate(rules, at) == [fired, concentrated]
    assert engine.evaluate(rules, at) == []  # still holding: nothing new
    assert engine.portfolio(at).active_alert_counts == (
        ("coverage_below", 1),
        ("largest_counterparty_share_above", 1),
    )
    pay(engine, D0 + 1, "d/deposit", "b/deposit", 600)  # 1200 in: coverage 1.2, c's share 0.5
    later = at + 1
    assert engine.evaluate(rules, later) == [
        Alert("coverage_below", "b", "USD", 30, 1.2, 1.0, later, False),
        Alert("largest_counterparty_share_above", "b", "USD", 30, 0.5, 0.9, later, False),
    ]
    assert engine.evaluate(rules, later) == []


def test_a_products_rules_apply_to_its_borrowers_and_only_borrowers_have_alerts() -> None:
    rules = parse_rules(CONFIG)
    engine = FlowEngine()
    engine.add_account(loan("b", "agri"))
    pay(engine, D0, "c/deposit", "b/deposit", 600)
    pay(engine, D0, "b/deposit", "c/deposit", 1)  # c has a profile, but no loan
    at = day("2026-03-06") * NS_PER_DAY
    alerts = engine.evaluate(rules, at)
    assert [(a.rule, a.partition_key, a.window_days) for a in alerts] == [
        ("largest_counterparty_share_above", "b", 90),  # 0.6 coverage is above agri's 0.5
    ]
    assert engine.evaluate(rules, at, keys=["c"]) == []


def test_an_alert_whose_value_becomes_undefined_clears_with_what_it_fired_with() -> None:
    rules = parse_rules(CONFIG)
    engine = FlowEngine()
    engine.add_account(loan("b"))
    at = day("2026-03-06") * NS_PER_DAY
    assert [a.rule for a in engine.evaluate(rules, at)] == ["coverage_below"]  # 0 in
    engine.forget_account("b/loan")  # the loan closed: no borrower, no profile
    assert engine.evaluate(rules, at) == [
        Alert("coverage_below", "b", "USD", 30, None, 1.0, at, False)
    ]


def test_share_rules_read_nothing_below_the_least_inflow_count() -> None:
    """One payment is a share of 1.0: with min_inflow_count = 3 the share rule holds only
    once three inflow transactions are in the window; coverage is read regardless."""
    text = "[default]\ncoverage_below = 1.0\nlargest_counterparty_share_above = 0.9\n"
    rules = parse_rules(text + "min_inflow_count = 3\n")
    assert rules.default.min_inflow_count == 3
    assert parse_rules(text).default.min_inflow_count == 0
    engine = FlowEngine()
    engine.add_account(loan("b"))
    at = day("2026-03-06") * NS_PER_DAY
    pay(engine, D0, "c/deposit", "b/deposit", 600)
    assert [a.rule for a in engine.evaluate(rules, at)] == ["coverage_below"]
    pay(engine, D0 + 1, "c/deposit", "b/deposit", 601)
    pay(engine, D0 + 2, "c/deposit", "b/deposit", 602)  # three, all from c: a share of 1.0
    later = at + 1
    assert engine.evaluate(rules, later) == [
        Alert("coverage_below", "b", "USD", 30, 1.803, 1.0, later, False),
        Alert("largest_counterparty_share_above", "b", "USD", 30, 1.0, 0.9, later, True),
    ]
