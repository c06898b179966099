"""core.authority: account patterns, roles, and what a batch of transactions touches."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.authority import (
    Action,
    Identity,
    Role,
    ScopeError,
    action_of,
    check_accounts,
    check_action,
    check_pattern,
    check_posting,
    parse_roles,
    stream_scope,
    targets_to_look_up,
)
from core.model import Kind, Leg, TransactionSpec

SEGMENT = st.text(alphabet="abcXYZ019-_.:", min_size=1, max_size=8)
ACCOUNT_ID = st.lists(SEGMENT, min_size=1, max_size=3).map("/".join)


def poster(*patterns: str) -> Identity:
    return Identity("p", frozenset({Role.POSTER}), patterns)


def spec(tid: str, accounts: tuple[str, ...] = (), target: str = "") -> TransactionSpec:
    legs = tuple(Leg(a, n == 0, 1, "USD") for n, a in enumerate(accounts))
    kind = Kind.VOID_PENDING if target else Kind.ORDINARY
    return TransactionSpec(tid, kind, legs, 1, (), "", 0, target)


def test_the_issues_loan_product_scope() -> None:
    product = poster("cust-*/loan-*", "@funding/loans")
    assert product.in_scope("cust-42/loan-7")
    assert product.in_scope("@funding/loans")
    for outside in ("cust-42/deposit", "@funding/cards", "cust-42/loan-7/x", "bank/loan-1"):
        assert not product.in_scope(outside), outside


@given(ACCOUNT_ID)
def test_double_star_is_every_account(account_id: str) -> None:
    assert poster("**").in_scope(account_id)
    assert poster("**").in_scope("@" + account_id)


@given(ACCOUNT_ID, ACCOUNT_ID)
def test_a_pattern_without_stars_is_only_itself(pattern: str, account_id: str) -> None:
    assert poster(pattern).in_scope(account_id) == (pattern == account_id)


@given(st.lists(SEGMENT, min_size=2, max_size=3))
def test_a_star_never_crosses_a_slash(segments: list[str]) -> None:
    account_id = "/".join(segments)
    assert not poster("*").in_scope(account_id)
    assert poster("/".join("*" for _ in segments)).in_scope(account_id)


@given(st.text(alphabet="ab*/.", min_size=1, max_size=10), ACCOUNT_ID)
def test_stars_match_as_their_regex(pattern: str, account_id: str) -> None:
    """'*' is [^/]*, '**' is .*, everything else itself: checked against a regex built here."""
    if "***" in pattern:
        with pytest.raises(ScopeError):
            check_pattern(pattern)
        return
    regex = "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part)
        for part in re.split(r"(\*\*|\*)", pattern)
    )
    assert poster(pattern).in_scope(account_id) == (re.fullmatch(regex, account_id) is not None)


@pytest.mark.parametrize("bad", ["", "a b", "x" * 257, "a\n", "é", "a***b"])
def test_patterns_are_checked(bad: str) -> None:
    with pytest.raises(ScopeError):
        check_pattern(bad)


def test_every_served_method_has_an_action() -> None:
    from tally.v1 import audit_pb2, ledger_pb2, monitor_pb2, shard_pb2

    services = (
        (ledger_pb2, "Ledger"),
        (shard_pb2, "Shard"),
        (audit_pb2, "Audit"),
        (monitor_pb2, "Monitor"),
    )
    for module, service in services:
        descriptor = module.DESCRIPTOR.services_by_name[service]
        for method in descriptor.methods:
            assert action_of(f"/{descriptor.full_name}/{method.name}") is not None, method.name
    assert action_of("/grpc.health.v1.Health/Check") is Action.PROBE
    assert action_of("/tally.v1.Ledger/Nope") is None
    assert action_of("/elsewhere.Service/Call") is None


def test_roles_do_not_imply_one_another() -> None:
    admin = Identity("a", frozenset({Role.ADMIN}), ("**",))
    assert check_action(admin, Action.POST) is not None
    assert check_action(admin, Action.MANAGE) is None
    auditor = Identity("u", frozenset({Role.AUDITOR}))
    assert check_accounts(auditor, Action.READ, ["anything/at-all"]) is None
    assert check_action(auditor, Action.MANAGE) is not None
    reader = Identity("r", frozenset({Role.READER}), ("cust-1/*",))
    denial = check_accounts(reader, Action.READ, ["cust-1/a", "cust-2/a"])
    assert denial is not None and denial.reason == "scope" and "cust-2/a" in denial.message
    assert check_action(Identity("n", frozenset()), Action.PROBE) is None


def test_parse_roles_names_an_unknown_one() -> None:
    assert parse_roles(["poster", "reader"]) == {Role.POSTER, Role.READER}
    with pytest.raises(ValueError, match="superuser"):
        parse_roles(["superuser"])


def test_targets_created_earlier_in_the_batch_are_not_looked_up() -> None:
    batch = [spec("h", ("cust-1/loan", "@f")), spec("v", target="h"), spec("w", target="x")]
    assert targets_to_look_up(batch) == ["x"]


def test_check_posting_follows_targets() -> None:
    product = poster("cust-*/loan-*", "@f")
    in_batch = [spec("h", ("cust-1/loan-1", "@f")), spec("v", target="h")]
    assert check_posting(product, in_batch, {}) is None
    looked_up = [spec("v", target="old")]
    assert check_posting(product, looked_up, {"old": ["cust-1/loan-1", "@f"]}) is None
    outside = check_posting(product, looked_up, {"old": ["cust-1/deposit", "@f"]})
    assert outside is not None and "cust-1/deposit" in outside.message
    unseen = check_posting(product, looked_up, {})
    assert unseen is not None and "'old'" in unseen.message
    # An unscoped poster needs no lookups at all.
    assert check_posting(poster("**"), looked_up, {}) is None


def test_the_change_stream_is_for_monitors_auditors_and_the_cluster() -> None:
    """StreamJournal is its own action: a monitor is scoped (its scope filters each block), an
    auditor and the cluster see every block whole, and no other role may stream."""
    assert action_of("/tally.v1.Ledger/StreamJournal") is Action.STREAM
    monitor = Identity("m", frozenset({Role.MONITOR}), ("cust-*/loan-*",))
    assert check_action(monitor, Action.STREAM) is None
    scope = stream_scope(monitor)
    assert scope is not None
    assert scope("cust-4/loan-1") and not scope("cust-4/deposit")
    assert stream_scope(Identity("m", frozenset({Role.MONITOR}), ("**",))) is None
    assert stream_scope(Identity("a", frozenset({Role.AUDITOR}))) is None
    assert stream_scope(Identity("c", frozenset({Role.CLUSTER}))) is None
    for role in (Role.POSTER, Role.READER, Role.ADMIN):
        someone = Identity("x", frozenset({role}), ("**",))
        denial = check_action(someone, Action.STREAM)
        assert denial is not None and "monitor" in denial.message
        with pytest.raises(ValueError, match="monitor"):
            stream_scope(someone)
    # A monitor may not read, post or manage: roles do not imply one another.
    for action in (Action.READ, Action.POST, Action.MANAGE, Action.AUDIT):
        assert check_action(monitor, action) is not None
    assert parse_roles(["monitor"]) == {Role.MONITOR}


@pytest.mark.parametrize(
    ("roles", "accounts", "key", "allowed"),
    [
        ({Role.MONITOR}, ("cust-42/**",), "cust-42", True),
        ({Role.MONITOR}, ("cust-*/**",), "cust-42", True),
        ({Role.READER}, ("**",), "cust-42", True),
        ({Role.AUDITOR}, (), "cust-42", True),
        ({Role.MONITOR}, ("cust-42/deposit",), "cust-42", False),  # not all of its accounts
        ({Role.MONITOR}, ("cust-42/*",), "cust-42", False),  # not cust-42/loan/1
        ({Role.MONITOR}, ("cust-4/**",), "cust-42", False),
        ({Role.MONITOR}, ("cust-42*/**",), "cust-42", True),
        ({Role.POSTER}, ("**",), "cust-42", False),  # the role, not the scope
        ({Role.ADMIN}, ("**",), "cust-42", False),
    ],
)
def test_a_profile_needs_a_scope_over_every_account_of_its_key(
    roles: set[Role], accounts: tuple[str, ...], key: str, allowed: bool
) -> None:
    from core.authority import check_partition

    denial = check_partition(Identity("who", frozenset(roles), accounts), Action.PROFILE, key)
    assert (denial is None) is allowed, denial
    if denial is not None:
        assert key in denial.message or "needs the role" in denial.message
