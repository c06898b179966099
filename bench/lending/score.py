"""The monitor's alerts against the scenario's ground truth: per rule, the borrowers planted and
alerted, precision and recall; per pattern, whether every borrower planted with it tripped
every rule it should and nothing else.

An alert counts for a borrower when its rule fired for it at least once (a firing message of
the alert stream); clearing later does not undo it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bench.lending.scenario import PATTERN_RULES, PATTERNS, Scenario
from core.flows import rules


@dataclass(frozen=True, slots=True)
class RuleScore:
    rule: str
    planted: tuple[str, ...]
    alerted: tuple[str, ...]
    true_positives: int
    false_positives: tuple[str, ...]
    missed: tuple[str, ...]
    precision: float | None  # None when nothing was alerted
    recall: float | None  # None when nothing was planted


@dataclass(frozen=True, slots=True)
class PatternScore:
    pattern: str
    borrower_count: int
    expected_rules: tuple[str, ...]
    alerted_count: int  # borrowers of the pattern with any rule fired
    fired: tuple[tuple[str, int], ...]  # rule -> borrowers of the pattern it fired for
    found: bool  # every borrower tripped every expected rule and no other


@dataclass(frozen=True, slots=True)
class Score:
    rules: tuple[RuleScore, ...]
    patterns: tuple[PatternScore, ...]
    every_pattern_found: bool  # every planted pattern found and no negative alerted

    def as_json(self) -> dict[str, object]:
        return {
            "every_pattern_found": self.every_pattern_found,
            "rules": [
                {
                    "rule": r.rule, "planted": list(r.planted), "alerted": list(r.alerted),
                    "true_positives": r.true_positives,
                    "false_positives": list(r.false_positives), "missed": list(r.missed),
                    "precision": r.precision, "recall": r.recall,
                }
                for r in self.rules
            ],
            "patterns": [
                {
                    "pattern": p.pattern, "borrowers": p.borrower_count,
                    "expected_rules": list(p.expected_rules), "alerted": p.alerted_count,
                    "fired": dict(p.fired), "found": p.found,
                }
                for p in self.patterns
            ],
        }  # fmt: skip


def fired_by_rule(alerts: Iterable[tuple[str, str, bool]]) -> dict[str, set[str]]:
    """(rule, borrower, firing) -> rule -> the borrowers it fired for at least once."""
    found: dict[str, set[str]] = {rule: set() for rule in rules.RULE_NAMES}
    for rule, borrower, firing in alerts:
        if firing:
            found.setdefault(rule, set()).add(borrower)
    return found


def score(scenario: Scenario, fired: dict[str, set[str]]) -> Score:
    borrowers = {b.key for b in scenario.borrowers}
    rule_scores = []
    for rule in rules.RULE_NAMES:
        planted = scenario.planted(rule)
        alerted = fired.get(rule, set()) & borrowers
        hits = len(planted & alerted)
        rule_scores.append(
            RuleScore(
                rule=rule,
                planted=tuple(sorted(planted)),
                alerted=tuple(sorted(alerted)),
                true_positives=hits,
                false_positives=tuple(sorted(alerted - planted)),
                missed=tuple(sorted(planted - alerted)),
                precision=hits / len(alerted) if alerted else None,
                recall=hits / len(planted) if planted else None,
            )
        )
    pattern_scores = []
    for pattern in PATTERNS:
        members = scenario.by_pattern(pattern)
        if not members:
            continue
        expected = PATTERN_RULES[pattern]
        got = {b.key: {r for r, keys in fired.items() if b.key in keys} for b in members}
        pattern_scores.append(
            PatternScore(
                pattern=pattern,
                borrower_count=len(members),
                expected_rules=tuple(sorted(expected)),
                alerted_count=sum(1 for rules_fired in got.values() if rules_fired),
                fired=tuple(
                    (rule, sum(1 for r in got.values() if rule in r))
                    for rule in rules.RULE_NAMES
                    if any(rule in r for r in got.values())
                ),
                found=all(rules_fired == expected for rules_fired in got.values()),
            )
        )
    every = all(p.found for p in pattern_scores)
    return Score(tuple(rule_scores), tuple(pattern_scores), every)
