"""Valid journal chains for the cold segment tests, hashed and signed with core.journal and
core.signing as a writer would: accounts created, ordinary and held transactions (some whose
applied legs differ from the submitted ones), their postings with the counters after each, and
closures, posting sequences contiguous across blocks and timestamps increasing."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from core import journal, signing
from core.journal import BlockHeader
from core.model import AccountSpec, Kind, Leg, Posting, Status, TransactionSpec, TransactionState
from core.store.cold.format import ColdBlock, cold_transaction

_METADATA_TEXT = 'abc|é€ "\\\n'


@dataclass
class ChainState:
    """Where a chain stands, to continue it in another segment."""

    sequence: int = 0
    hash: bytes = journal.GENESIS_HASH
    next_posting: int = 1
    clock_ns: int = 1_700_000_000_000_000_000
    counters: dict[str, list[int]] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    transaction_count: int = 0


def _metadata(rng: random.Random) -> tuple[tuple[str, str], ...]:
    pairs = {
        "".join(rng.choices(_METADATA_TEXT, k=rng.randint(1, 4))): "".join(
            rng.choices(_METADATA_TEXT, k=rng.randint(0, 6))
        )
        for _ in range(rng.randint(0, 2))
    }
    return tuple(sorted(pairs.items()))


def _tick(state: ChainState, rng: random.Random) -> int:
    state.clock_ns += rng.randint(1, 5_000_000)
    return state.clock_ns


def _new_account(state: ChainState, rng: random.Random, index: int) -> tuple[AccountSpec, int]:
    account_id = f"cust-{rng.randint(1, 10**9)}/acc-{index}-{len(state.counters)}"
    spec = AccountSpec(
        account_id, "USD", rng.randint(0, 9), rng.random() < 0.3, False, _metadata(rng)
    )
    state.counters[account_id] = [0, 0, 0, 0]
    return spec, _tick(state, rng)


def _transaction(
    state: ChainState, rng: random.Random, accounts: list[str]
) -> tuple[TransactionState, list[Posting]]:
    debit, credit = rng.sample(accounts, 2)
    amount = rng.randint(1, 10**9)
    kind = Kind.PENDING if rng.random() < 0.25 else Kind.ORDINARY
    legs = (Leg(debit, True, amount, "USD"), Leg(credit, False, amount, "USD"))
    applied = legs
    if kind is Kind.ORDINARY and rng.random() < 0.2:  # applied in part, as a balancing would
        applied = (
            Leg(debit, True, amount // 2 + 1, "USD"),
            Leg(credit, False, amount // 2 + 1, "USD"),
        )
    state.transaction_count += 1
    spec = TransactionSpec(
        f"tx-{state.transaction_count:08d}-{rng.randint(0, 10**6)}",
        kind,
        legs,
        rng.randint(0, 99),
        _metadata(rng),
        "2026-12-07" if rng.random() < 0.5 else "",
        30 if kind is Kind.PENDING else 0,
        "",
    )
    at = _tick(state, rng)
    postings = []
    for leg in applied:
        counters = state.counters[leg.account_id]
        posted, pending = (0, leg.amount) if kind is Kind.PENDING else (leg.amount, 0)
        offset = 0 if leg.is_debit else 1
        counters[offset] += posted
        counters[2 + offset] += pending
        postings.append(
            Posting(
                state.next_posting,
                spec.id,
                leg.account_id,
                leg.is_debit,
                posted,
                pending,
                at,
                *counters,
            )
        )
        state.next_posting += 1
    status = Status.PENDING if kind is Kind.PENDING else Status.POSTED
    return TransactionState(spec, applied, at, status), postings


def build_block(
    state: ChainState,
    rng: random.Random,
    signer: signing.Signer | None,
    shard: int = 0,
    transaction_count_max: int = 4,
    account_pool: list[str] | None = None,
    account_count: int | None = None,
) -> ColdBlock:
    """The chain's next block, hashed (and signed when given a signer) onto state: it creates
    account_count accounts (default 0 to 3) and posts among account_pool (default all open)."""
    sequence = state.sequence + 1
    count = rng.randint(0, 3) if account_count is None else account_count
    created = [_new_account(state, rng, i) for i in range(count)]
    if len(state.counters) < 2:
        created += [_new_account(state, rng, i) for i in range(2)]
    open_accounts = account_pool or sorted(set(state.counters) - state.closed)
    states, postings = [], []
    for _ in range(rng.randint(0, transaction_count_max)):
        transaction, made = _transaction(state, rng, open_accounts)
        states.append(transaction)
        postings.extend(made)
    closures = []
    if rng.random() < 0.15 and len(open_accounts) > 4:
        closing = rng.choice(open_accounts)
        state.closed.add(closing)
        closures.append((closing, _tick(state, rng)))
    lines = journal.block_lines(
        created, ((s, journal.legs_texts(s)) for s in states), postings, closures
    )
    hash_ = journal.block_hash(state.hash, sequence, lines)
    key_id, signature = "", b""
    if signer is not None:
        key_id, signature = signer.key_id, signer.sign(shard, sequence, hash_)
    header = BlockHeader(
        sequence, state.hash, hash_, 1, _tick(state, rng), state.next_posting, state.clock_ns,
        key_id, signature,
    )  # fmt: skip
    state.sequence, state.hash = sequence, hash_
    return ColdBlock(
        header,
        tuple(created),
        tuple(cold_transaction(s) for s in states),
        tuple(postings),
        tuple(closures),
    )


def build_chain(
    state: ChainState, seed: int, block_count: int, signer: signing.Signer | None = None
) -> list[ColdBlock]:
    rng = random.Random(seed)
    return [build_block(state, rng, signer) for _ in range(block_count)]
