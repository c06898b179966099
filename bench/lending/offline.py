"""The offline cross-check: the same scenario fed straight into core.flows (no ledger, no stream),
days closed as the monitor closes them (shards/monitor/books.py: every borrower evaluated at
the end of each day before the first flow of a later day), to compare with the online run.

The report's figures come from the online run; this only says whether the pipeline changed
what the engine would have found from the scenario itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.lending.scenario import CURRENCY, LOAN_DAY, TRANSFER_CODE, Scenario
from core.flows import rules
from core.flows.engine import FlowEngine
from core.flows.model import NS_PER_DAY, AccountInfo, Flow
from core.model import Leg
from shards.monitor.books import DAYS_CLOSED_MAX, end_of_day_ns


@dataclass(frozen=True)
class OfflineRun:
    engine: FlowEngine
    alerts: list[rules.Alert]


def run(scenario: Scenario, rule_set: rules.RuleSet) -> OfflineRun:
    engine = FlowEngine()
    for account in scenario.accounts:
        engine.add_account(AccountInfo(account.account_id, CURRENCY, account.code, ()))
    alerts: list[rules.Alert] = []
    for offset, day_payments in enumerate(scenario.payments_by_day):
        if offset == LOAN_DAY:
            for account in scenario.loan_accounts:
                info = AccountInfo(account.account_id, CURRENCY, account.code, account.metadata)
                engine.add_account(info)
        for payment in day_payments:
            day = scenario.first_day + payment.day
            if engine.day is not None and day > engine.day:
                for closed in range(max(engine.day, day - DAYS_CLOSED_MAX), day):
                    alerts += engine.evaluate(rule_set, end_of_day_ns(closed))
            legs = (
                Leg(payment.debit_account_id, True, payment.amount, CURRENCY),
                Leg(payment.credit_account_id, False, payment.amount, CURRENCY),
            )
            engine.add_flow(Flow(payment.transaction_id, day * NS_PER_DAY, TRANSFER_CODE, (), legs))
    return OfflineRun(engine, alerts)


def fired(alerts: list[rules.Alert]) -> dict[str, set[str]]:
    """Rule -> the borrowers it fired for at least once."""
    found: dict[str, set[str]] = {rule: set() for rule in rules.RULE_NAMES}
    for alert in alerts:
        if alert.firing:
            found[alert.rule].add(alert.partition_key)
    return found
