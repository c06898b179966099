"""Protobuf <-> domain conversions. The servicer layer is the only place _pb2 messages live."""

from __future__ import annotations

from collections.abc import Sequence

from core import ids, validation
from core.model import (
    AccountSpec,
    AccountState,
    CloseSpec,
    Kind,
    Leg,
    Posting,
    Rejection,
    Result,
    Status,
    TransactionSpec,
    TransactionState,
    available_balance,
)
from core.pieces import attempt_of_commit, participant_shards
from tally.v1 import ledger_pb2 as pb


def account_from_proto(message: pb.Account) -> AccountSpec | Rejection:
    return validation.check_account(
        message.id,
        message.currency,
        message.code,
        message.debits_must_not_exceed_credits,
        message.credits_must_not_exceed_debits,
        message.metadata,
    )


def accounts_from_proto(messages: Sequence[pb.Account]) -> list[AccountSpec | Rejection]:
    return validation.mark_duplicate_accounts([account_from_proto(m) for m in messages])


def transaction_from_proto(message: pb.Transaction) -> TransactionSpec | Rejection:
    return validation.check_transaction(
        message.id,
        [(leg.account_id, leg.side, leg.amount, leg.currency) for leg in message.legs],
        message.code,
        message.metadata,
        message.value_date,
        message.pending,
        message.timeout_seconds,
        message.linked,
        message.post_pending_id,
        message.void_pending_id,
        message.reverses_id,
    )


def transactions_from_proto(
    messages: Sequence[pb.Transaction],
) -> list[TransactionSpec | Rejection]:
    return validation.mark_batch([transaction_from_proto(m) for m in messages])


def closes_from_proto(messages: Sequence[pb.CloseAccount]) -> list[CloseSpec | Rejection]:
    return validation.mark_duplicates(
        [validation.check_close(m.account_id) for m in messages], "account_id"
    )


def result_to_proto(result: Result) -> pb.ItemResult:
    return pb.ItemResult(
        code=int(result.code), message=result.message, timestamp_ns=result.timestamp_ns
    )


def results_to_proto(results: Sequence[Result]) -> list[pb.ItemResult]:
    return [
        pb.ItemResult(code=int(r.code), message=r.message, timestamp_ns=r.timestamp_ns)
        for r in results
    ]


def account_spec_to_proto(spec: AccountSpec) -> pb.Account:
    return pb.Account(
        id=spec.id,
        currency=spec.currency,
        code=spec.code,
        debits_must_not_exceed_credits=spec.debits_must_not_exceed_credits,
        credits_must_not_exceed_debits=spec.credits_must_not_exceed_debits,
        metadata=dict(spec.metadata),
    )


def balance_to_proto(spec: AccountSpec, counters: tuple[int, int, int, int]) -> pb.Balance:
    debits_posted, credits_posted, debits_pending, credits_pending = counters
    return pb.Balance(
        debits_posted=debits_posted,
        credits_posted=credits_posted,
        debits_pending=debits_pending,
        credits_pending=credits_pending,
        available=available_balance(spec, *counters),
    )


def account_to_proto(account: AccountState) -> pb.AccountRecord:
    return pb.AccountRecord(
        account=account_spec_to_proto(account.spec),
        balance=balance_to_proto(account.spec, account.counters()),
        version=account.version,
        closed=bool(account.closed_at_ns),
        created_at_ns=account.created_at_ns,
        closed_at_ns=account.closed_at_ns,
    )


def leg_from_proto(leg: pb.Leg) -> Leg:
    return Leg(leg.account_id, leg.side == pb.SIDE_DEBIT, leg.amount, leg.currency)


def leg_to_proto(leg: Leg) -> pb.Leg:
    return pb.Leg(
        account_id=leg.account_id,
        side=pb.SIDE_DEBIT if leg.is_debit else pb.SIDE_CREDIT,
        amount=leg.amount,
        currency=leg.currency,
    )


def transaction_spec_to_proto(spec: TransactionSpec) -> pb.Transaction:
    metadata = dict(spec.metadata)
    reverses = ""
    if spec.kind is Kind.COMMIT or spec.kind is Kind.HOLD:
        metadata.pop(ids.DIGEST_KEY, None)  # the cluster's own, not the client's
        metadata.pop(ids.SHARDS_KEY, None)
        reverses = metadata.pop(ids.REVERSAL_OF_KEY, "")
    message = pb.Transaction(
        id=spec.id,
        legs=[leg_to_proto(leg) for leg in spec.legs],
        code=spec.code,
        metadata=metadata,
        value_date=spec.value_date,
        pending=spec.kind in (Kind.PENDING, Kind.PREPARED, Kind.HOLD),
        timeout_seconds=spec.timeout_seconds,
    )
    if spec.kind is Kind.POST_PENDING:
        message.post_pending_id = spec.target_id
    elif spec.kind in (Kind.VOID_PENDING, Kind.EXPIRY):
        message.void_pending_id = spec.target_id
    elif spec.kind is Kind.REVERSAL:
        message.reverses_id = spec.target_id
    elif spec.kind is Kind.COMMIT and reverses:
        message.reverses_id = reverses  # a cross-shard reversal, as its client sent it
    return message


_STATUS = {
    Status.POSTED: pb.TRANSACTION_STATUS_POSTED,
    Status.PENDING: pb.TRANSACTION_STATUS_PENDING,
    Status.PENDING_POSTED: pb.TRANSACTION_STATUS_PENDING_POSTED,
    Status.PENDING_VOIDED: pb.TRANSACTION_STATUS_PENDING_VOIDED,
    Status.PENDING_EXPIRED: pb.TRANSACTION_STATUS_PENDING_EXPIRED,
}


def transaction_to_proto(state: TransactionState) -> pb.TransactionRecord:
    record = pb.TransactionRecord(
        transaction=transaction_spec_to_proto(state.spec),
        timestamp_ns=state.timestamp_ns,
        status=_STATUS[state.status],
        # While PENDING, a hold's resolved_by_id is a participant's lock (core.ids
        # DECIDES_KEY), not yet its resolution.
        resolved_by_id=state.resolved_by_id if state.status is not Status.PENDING else "",
        reversed_by_id=state.reversed_by_id,
        expires_at_ns=state.expires_at_ns if state.status is Status.PENDING else 0,
        applied_legs=[leg_to_proto(leg) for leg in state.applied_legs],
    )
    kind = state.spec.kind
    if kind is Kind.COMMIT or kind is Kind.PREPARED or kind is Kind.HOLD:
        record.cross_shard_piece.SetInParent()
    if kind is Kind.COMMIT or kind is Kind.HOLD:
        record.cross_shard_piece.coordinator = True
        record.cross_shard_piece.attempt = attempt_of_commit(state.spec)
        record.cross_shard_piece.participant_shards.extend(participant_shards(state.spec))
    elif kind is Kind.PREPARED:
        record.cross_shard_piece.coordinator_shard = int(state.spec.target_id)
        record.cross_shard_piece.attempt = ids.parse_piece_id(state.spec.id)[1]
    return record


def posting_to_proto(posting: Posting, spec: AccountSpec, block_sequence: int) -> pb.Posting:
    counters = (
        posting.debits_posted_after,
        posting.credits_posted_after,
        posting.debits_pending_after,
        posting.credits_pending_after,
    )
    return pb.Posting(
        sequence=posting.sequence,
        transaction_id=posting.transaction_id,
        account_id=posting.account_id,
        side=pb.SIDE_DEBIT if posting.is_debit else pb.SIDE_CREDIT,
        posted_amount=posting.posted_amount,
        pending_delta=posting.pending_delta,
        timestamp_ns=posting.timestamp_ns,
        balance_after=balance_to_proto(spec, counters),
        block_sequence=block_sequence,
    )
