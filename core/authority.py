"""Who may do what: identities, roles, account scopes and the permission each RPC needs.

Pure policy. How an identity is proven (a client certificate, a bearer token) and where a
denial is answered live in shards/security; this module only decides.

An identity carries roles and an account scope:

- `poster`: posts transactions whose every leg's account is in its scope (and, for a post or
  void of a hold or a reversal, whose target's accounts are);
- `reader`: reads accounts, transactions and postings in its scope;
- `admin`: creates and closes accounts in its scope, and reads them; cluster operations;
- `auditor`: the Audit service and every read, unscoped (an audit reads the whole ledger);
- `monitor`: follows the change stream of the books (Ledger.StreamJournal), each block's
  content filtered to its scope (risk teams watching borrowers' cash flows);
- `cluster`: a gateway or a node of the cluster, the only identity the internal listener
  (tally.v1.Shard) accepts; unscoped, since a gateway acts for clients it has authorised.

A scope is a list of account patterns: `*` matches any run of characters within one segment
(not `/`), `**` any run at all, anything else itself. So a loan product's poster has
`cust-*/loan-*` and `@funding/loans`, and reaches `cust-42/loan-7` and the funding account and
nothing else (not `cust-42/deposit`, not `@funding/cards`). `**` is the whole ledger.

Roles do not imply one another: a product that posts and reads its results holds `poster` and
`reader`; an `admin` cannot move money unless it also holds `poster`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from core.model import TransactionSpec


class Role(enum.Enum):
    POSTER = "poster"
    READER = "reader"
    ADMIN = "admin"
    AUDITOR = "auditor"
    MONITOR = "monitor"
    CLUSTER = "cluster"


class Action(enum.Enum):
    """What an RPC does, as far as permissions go."""

    POST = "post"  # move money: Ledger.PostTransactions
    READ = "read"  # Ledger reads
    MANAGE = "manage"  # Ledger.CreateAccounts, CloseAccounts
    AUDIT = "audit"  # the Audit service
    STREAM = "stream"  # Ledger.StreamJournal: the change stream
    PROFILE = "profile"  # the Monitor service: borrowers' cash-flow profiles
    INTERNAL = "internal"  # tally.v1.Shard: only the cluster's own processes
    PROBE = "probe"  # health checking and reflection: any authenticated caller
    ROUTE = "route"  # Ledger.GetRouting: the slot map and the nodes' client endpoints


# Which roles allow each action, and whether the role's scope then limits it.
_ALLOWED: Final[dict[Action, dict[Role, bool]]] = {
    # role -> scoped
    Action.POST: {Role.POSTER: True, Role.CLUSTER: False},
    Action.READ: {
        Role.READER: True,
        Role.ADMIN: True,
        Role.AUDITOR: False,
        Role.CLUSTER: False,
    },
    Action.MANAGE: {Role.ADMIN: True, Role.CLUSTER: False},
    Action.AUDIT: {Role.AUDITOR: False},
    Action.STREAM: {Role.MONITOR: True, Role.AUDITOR: False, Role.CLUSTER: False},
    Action.PROFILE: {Role.MONITOR: True, Role.READER: True, Role.AUDITOR: False},
    Action.INTERNAL: {Role.CLUSTER: False},
    # Whoever sends work a client library may route straight to a node; it names no account,
    # so no scope limits it.
    Action.ROUTE: {
        Role.POSTER: False,
        Role.READER: False,
        Role.ADMIN: False,
        Role.CLUSTER: False,
    },
}

_LEDGER: Final = "/tally.v1.Ledger/"
_SHARD: Final = "/tally.v1.Shard/"
_AUDIT: Final = "/tally.v1.Audit/"
_MONITOR: Final = "/tally.v1.Monitor/"
_PROBES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")
_LEDGER_ACTIONS: Final = {
    "CreateAccounts": Action.MANAGE,
    "CloseAccounts": Action.MANAGE,
    "PostTransactions": Action.POST,
    "GetAccounts": Action.READ,
    "GetTransactions": Action.READ,
    "ListPostings": Action.READ,
    "BalanceAt": Action.READ,
    "StreamJournal": Action.STREAM,
    "GetRouting": Action.ROUTE,
}

_MONITOR_ACTIONS: Final = {"GetFlowProfile": Action.PROFILE, "GetPortfolio": Action.PROFILE}


def action_of(method: str) -> Action | None:
    """The action of a gRPC method ("/tally.v1.Ledger/PostTransactions"); None for a method
    Tally does not serve (gRPC answers it UNIMPLEMENTED)."""
    if method.startswith(_LEDGER):
        return _LEDGER_ACTIONS.get(method.removeprefix(_LEDGER))
    if method.startswith(_SHARD):
        return Action.INTERNAL
    if method.startswith(_AUDIT):
        return Action.AUDIT
    if method.startswith(_MONITOR):
        return _MONITOR_ACTIONS.get(method.removeprefix(_MONITOR))
    if method.startswith(_PROBES):
        return Action.PROBE
    return None


class ScopeError(ValueError):
    """An account pattern that is not one."""


_PATTERN_TEXT: Final = re.compile(r"[A-Za-z0-9_.:/+=@*-]{1,256}")


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*|\*)", pattern)
    regex = "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part) for part in parts
    )
    return re.compile(regex)


def check_pattern(pattern: str) -> str:
    """`pattern` if it is an account pattern; ScopeError naming the fault otherwise."""
    if _PATTERN_TEXT.fullmatch(pattern) is None:
        raise ScopeError(
            f"account pattern {pattern!r} must be 1..256 characters of an account id's "
            "(A-Z a-z 0-9 - _ . : / + = @) and '*'"
        )
    if "***" in pattern:
        raise ScopeError(f"account pattern {pattern!r}: use '*' or '**', not '***'")
    return pattern


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller."""

    subject: str
    roles: frozenset[Role]
    accounts: tuple[str, ...] = ()
    # How it was proven ("certificate", "token") and that credential's id (a certificate's
    # serial number in hex, a token's jti): what a revocation names.
    via: str = ""
    credential_id: str = ""
    _scope: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        for pattern in self.accounts:
            check_pattern(pattern)
        object.__setattr__(self, "_scope", tuple(_compiled(p) for p in self.accounts))

    def in_scope(self, account_id: str) -> bool:
        return any(pattern.fullmatch(account_id) is not None for pattern in self._scope)

    def describe(self) -> str:
        roles = ",".join(sorted(role.value for role in self.roles)) or "no roles"
        return f"{self.subject} ({roles})"


@dataclass(frozen=True, slots=True)
class Denial:
    """Why an identity may not: `reason` is a short word for metrics and the security log
    ("role", "scope"); `message` names the missing permission."""

    reason: str
    message: str


def _grants(identity: Identity, action: Action) -> dict[Role, bool]:
    allowed = _ALLOWED.get(action, {})
    return {role: scoped for role, scoped in allowed.items() if role in identity.roles}


def check_action(identity: Identity, action: Action) -> Denial | None:
    """None if some role of the identity allows the action at all (its scope aside)."""
    if action is Action.PROBE:
        return None
    if _grants(identity, action):
        return None
    needed = " or ".join(sorted(role.value for role in _ALLOWED[action]))
    return Denial("role", f"{action.value} needs the role {needed}; {identity.describe()} has none")


def is_unscoped(identity: Identity, action: Action) -> bool:
    """True if the identity may do the action to any account (no scope check needed)."""
    grants = _grants(identity, action)
    return any(not scoped for scoped in grants.values()) or (
        any(grants.values()) and "**" in identity.accounts
    )


def check_accounts(identity: Identity, action: Action, account_ids: Iterable[str]) -> Denial | None:
    """None if the identity may do the action to every one of the accounts; else a Denial
    naming the first account out of its scope."""
    denial = check_action(identity, action)
    if denial is not None or is_unscoped(identity, action):
        return denial
    for account_id in account_ids:
        if not identity.in_scope(account_id):
            return Denial(
                "scope",
                f"{action.value} on account {account_id!r} is outside the scope of "
                f"{identity.describe()}: {', '.join(identity.accounts) or 'no accounts'}",
            )
    return None


def check_partition(identity: Identity, action: Action, key: str) -> Denial | None:
    """None if the identity may do the action to every account of partition key `key`
    (a borrower's profile is made of all of them): an unscoped grant, or a pattern of its
    scope of the form P/** whose P (no '/') matches the key; else a Denial naming the key."""
    denial = check_action(identity, action)
    if denial is not None or is_unscoped(identity, action):
        return denial
    for pattern in identity.accounts:
        head, slash, tail = pattern.partition("/")
        if slash and tail == "**" and _compiled(head).fullmatch(key) is not None:
            return None
    return Denial(
        "scope",
        f"{action.value} of partition key {key!r} needs a scope over all of its accounts "
        f"({key}/** or wider); {identity.describe()} has "
        f"{', '.join(identity.accounts) or 'no accounts'}",
    )


def stream_scope(identity: Identity) -> Callable[[str], bool] | None:
    """What of the change stream an identity may see: None, every block whole (an unscoped
    grant: auditor, cluster, or a monitor over '**'); else whether an account is in its scope
    (a scoped monitor sees, of each block, only what touches its accounts). Call it only for
    an identity allowed Action.STREAM (check_action)."""
    check_denied = check_action(identity, Action.STREAM)
    if check_denied is not None:
        raise ValueError(check_denied.message)
    if is_unscoped(identity, Action.STREAM):
        return None
    return identity.in_scope


def parse_roles(names: Iterable[str]) -> frozenset[Role]:
    """Roles by name; ValueError naming an unknown one."""
    roles = set()
    for name in names:
        try:
            roles.add(Role(name))
        except ValueError:
            known = ", ".join(role.value for role in Role)
            raise ValueError(f"unknown role {name!r} (known: {known})") from None
    return frozenset(roles)


# What a credential carries, in a certificate's grant extension and a token's claims alike.
def grant_claims(roles: Iterable[Role], accounts: Iterable[str]) -> dict[str, list[str]]:
    return {
        "roles": sorted(role.value for role in roles),
        "accounts": [check_pattern(pattern) for pattern in accounts],
    }


def identity_from_claims(
    subject: str, claims: dict[str, object], via: str, credential_id: str
) -> Identity:
    """An Identity from grant claims (grant_claims' shape); ValueError if they are malformed."""
    roles = claims.get("roles", [])
    accounts = claims.get("accounts", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ValueError("roles must be a list of role names")
    if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
        raise ValueError("accounts must be a list of account patterns")
    return Identity(subject, parse_roles(roles), tuple(accounts), via, credential_id)


# ---- what a batch of transactions touches ----


def targets_to_look_up(transactions: Iterable[object]) -> list[str]:
    """The ids that posts, voids and reversals of the batch name and that no earlier item of
    the batch creates: whose accounts a scoped poster's check must read first."""
    created: set[str] = set()
    wanted: list[str] = []
    for item in transactions:
        if not isinstance(item, TransactionSpec):
            continue
        if item.target_id and item.target_id not in created and item.target_id not in wanted:
            wanted.append(item.target_id)
        created.add(item.id)
    return wanted


def check_posting(
    identity: Identity,
    transactions: Iterable[object],
    target_accounts: Mapping[str, Iterable[str]],
) -> Denial | None:
    """None if a poster may post every transaction of the batch: each leg's account in its
    scope, and for a post, void or reversal the accounts of its target (`target_accounts`, the
    ones read for targets_to_look_up; a target neither there nor created earlier in the batch
    is one the poster cannot see, so cannot act on)."""
    denial = check_action(identity, Action.POST)
    if denial is not None or is_unscoped(identity, Action.POST):
        return denial
    batch: dict[str, tuple[str, ...]] = {}
    for item in transactions:
        if not isinstance(item, TransactionSpec):
            continue
        accounts = [leg.account_id for leg in item.legs]
        if item.target_id:
            target = batch.get(item.target_id)
            if target is None:
                found = target_accounts.get(item.target_id)
                if found is None:
                    return Denial(
                        "scope",
                        f"transaction {item.id!r} names {item.target_id!r}, which is not a "
                        f"transaction {identity.describe()} can see",
                    )
                target = tuple(found)
            accounts.extend(target)
        denial = check_accounts(identity, Action.POST, accounts)
        if denial is not None:
            return denial
        batch[item.id] = tuple(accounts)
    return None
