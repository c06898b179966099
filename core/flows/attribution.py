"""A flow as money moved between accounts, and what each movement is to each borrower.

Money moves from debited accounts to credited accounts. Within a currency a flow's debits are
matched to its credits in two passes, each first come first served in leg order: first each
partition key's debits against its own credits (so an own-account transfer is never read as
money to and from someone else, whatever the legs' order), then what is left of every debit
against what is left of every credit. Integer amounts, no proration, deterministic.

To the borrower on either side (a client partition key: not '@...' nor '~...'), a transfer
is one of the MovementKind below. A counterparty is the other side's partition key, or the
whole account id for a bank-internal '@' account ('@cash', '@funding/loans').
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from core.flows.model import Flow
from core.model import Leg
from core.slots import partition_key


class MovementKind(enum.Enum):
    INFLOW = "inflow"  # from a counterparty into the borrower's non-loan accounts
    OUTFLOW = "outflow"  # from the borrower's non-loan accounts to a counterparty
    OWN = "own"  # between the borrower's own accounts (not a loan movement)
    DISBURSEMENT = "disbursement"  # into non-loan accounts from its loans or a funding account
    REPAYMENT = "repayment"  # into the borrower's loan accounts, from anyone: debt service paid


@dataclass(frozen=True, slots=True)
class Transfer:
    source_account_id: str
    destination_account_id: str
    currency: str
    amount: int


@dataclass(frozen=True, slots=True)
class Movement:
    borrower: str
    kind: MovementKind
    counterparty: str  # "" for OWN, DISBURSEMENT and REPAYMENT
    currency: str
    amount: int


def counterparty_of(account_id: str) -> str:
    """The name a borrower sees on the other side: a partition key, or a whole '@' id."""
    return account_id if account_id.startswith("@") else partition_key(account_id)


def is_client(name: str) -> bool:
    return not name.startswith(("@", "~"))


def transfers(flow: Flow) -> list[Transfer]:
    """The flow's legs matched debit to credit (module docstring): own keys first, then all."""
    found: list[Transfer] = []
    for currency in sorted({leg.currency for leg in flow.legs}):
        legs = [leg for leg in flow.legs if leg.currency == currency]
        debits = _Side([leg for leg in legs if leg.is_debit])
        credits = _Side([leg for leg in legs if not leg.is_debit])
        found += _match(debits, credits, currency, same_key=True)
        found += _match(debits, credits, currency, same_key=False)
    return found


class _Side:
    """One side's legs of a currency: accounts in leg order and what is left of each."""

    __slots__ = ("account_ids", "amounts")

    def __init__(self, legs: list[Leg]) -> None:
        self.account_ids = [leg.account_id for leg in legs]
        self.amounts = [leg.amount for leg in legs]


def _match(debits: _Side, credits: _Side, currency: str, *, same_key: bool) -> list[Transfer]:
    """Consumes the amounts it matches, first come first served in leg order."""
    found = []
    for d, source in enumerate(debits.account_ids):
        for c, destination in enumerate(credits.account_ids):
            if not debits.amounts[d]:
                break
            if not credits.amounts[c]:
                continue
            if same_key and counterparty_of(source) != counterparty_of(destination):
                continue
            amount = min(debits.amounts[d], credits.amounts[c])
            debits.amounts[d] -= amount
            credits.amounts[c] -= amount
            found.append(Transfer(source, destination, currency, amount))
    return found


def movements(
    flow: Flow, is_loan: Callable[[str], bool], funding_account_ids: frozenset[str]
) -> list[Movement]:
    """What the flow is to each borrower it touches, transfer by transfer."""
    found: list[Movement] = []
    for transfer in transfers(flow):
        found += _classify(transfer, is_loan, funding_account_ids)
    return found


def _classify(
    transfer: Transfer, is_loan: Callable[[str], bool], funding_account_ids: frozenset[str]
) -> list[Movement]:
    """A loan account's debit to outside its borrower (interest charged, a disbursement paid
    to a supplier) is no movement of the borrower's money: it is left out."""
    source, destination = transfer.source_account_id, transfer.destination_account_id
    payer, payee = counterparty_of(source), counterparty_of(destination)
    currency, amount = transfer.currency, transfer.amount
    if payer == payee:
        if not is_client(payer):
            return []
        kind = MovementKind.OWN
        if is_loan(source) != is_loan(destination):
            kind = MovementKind.DISBURSEMENT if is_loan(source) else MovementKind.REPAYMENT
        return [Movement(payer, kind, "", currency, amount)]
    found = []
    if is_client(payee):
        if is_loan(destination):
            found.append(Movement(payee, MovementKind.REPAYMENT, "", currency, amount))
        elif source in funding_account_ids:
            found.append(Movement(payee, MovementKind.DISBURSEMENT, "", currency, amount))
        else:
            found.append(Movement(payee, MovementKind.INFLOW, payer, currency, amount))
    if is_client(payer) and not is_loan(source):
        found.append(Movement(payer, MovementKind.OUTFLOW, payee, currency, amount))
    return found


def paying_pairs(flow: Flow) -> set[tuple[str, str]]:
    """The pairs of distinct client partition keys between which the flow moved money, each
    as (smaller, larger): who paid whom, whichever way."""
    pairs = set()
    for transfer in transfers(flow):
        payer = counterparty_of(transfer.source_account_id)
        payee = counterparty_of(transfer.destination_account_id)
        if payer != payee and is_client(payer) and is_client(payee):
            pairs.add((min(payer, payee), max(payer, payee)))
    return pairs
