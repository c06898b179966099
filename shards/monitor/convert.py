"""The monitor's records as tally.v1 messages (proto/tally/v1/monitor.proto)."""

from __future__ import annotations

from core.flows import features, rules
from tally.v1 import monitor_pb2 as mpb


def alert_to_proto(alert: rules.Alert) -> mpb.FlowAlert:
    message = mpb.FlowAlert(
        rule=alert.rule,
        partition_key=alert.partition_key,
        currency=alert.currency,
        window_days=alert.window_days,
        threshold=alert.threshold,
        at_ns=alert.at_ns,
        firing=alert.firing,
    )
    if alert.value is not None:
        message.has_value = True
        message.value = alert.value
    return message


def alert_of_proto(message: mpb.FlowAlert) -> rules.Alert:
    return rules.Alert(
        message.rule,
        message.partition_key,
        message.currency,
        message.window_days,
        message.value if message.has_value else None,
        message.threshold,
        message.at_ns,
        message.firing,
    )


def window_to_proto(window: features.WindowFeatures) -> mpb.WindowFeatures:
    message = mpb.WindowFeatures(
        window_days=window.window_days,
        currency=window.currency,
        start_day=window.start_day,
        end_day=window.end_day,
        inflow=window.inflow,
        outflow=window.outflow,
        net_flow=window.net_flow,
        inflow_count=window.inflow_count,
        outflow_count=window.outflow_count,
        transaction_count=window.transaction_count,
        own_transfer_amount=window.own_transfer_amount,
        disbursed=window.disbursed,
        debt_service_paid=window.debt_service_paid,
        debt_service_due=window.debt_service_due,
        counterparty_count=window.counterparty_count,
        largest_counterparty=window.largest_counterparty or "",
        counterparties_truncated=window.counterparties_truncated,
        round_trip_amount=window.round_trip_amount,
        linked_inflow_amount=window.linked_inflow_amount,
    )
    for name, value in (
        ("coverage", window.coverage),
        ("largest_counterparty_share", window.largest_counterparty_share),
        ("round_trip_share", window.round_trip_share),
        ("linked_inflow_share", window.linked_inflow_share),
    ):
        if value is not None:
            setattr(message, "has_" + name, True)
            setattr(message, name, value)
    return message


def baseline_to_proto(baseline: features.Baseline) -> mpb.Baseline:
    message = mpb.Baseline(
        currency=baseline.currency,
        window_days=baseline.window_days,
        current_inflow=baseline.current_inflow,
        window_count=baseline.window_count,
    )
    if baseline.mean is not None:
        message.has_mean = True
        message.mean = baseline.mean
        message.spread = baseline.spread or 0.0
    for name, value in (("ratio", baseline.ratio), ("z_score", baseline.z_score)):
        if value is not None:
            setattr(message, "has_" + name, True)
            setattr(message, name, value)
    return message


def profile_to_proto(
    profile: features.FlowProfile, active: rules.Active, stream_sequence: int
) -> mpb.FlowProfile:
    alerts = [
        mpb.FlowAlert(
            rule=rule,
            partition_key=key,
            currency=currency,
            window_days=window_days,
            threshold=threshold,
            firing=True,
        )
        for (rule, key, currency), (window_days, threshold) in sorted(active.items())
    ]
    return mpb.FlowProfile(
        partition_key=profile.partition_key,
        as_of_ns=profile.as_of_ns,
        as_of_day=profile.as_of_day,
        product=profile.product or "",
        windows=[window_to_proto(w) for w in profile.windows],
        baselines=[baseline_to_proto(b) for b in profile.baselines],
        active_alerts=alerts,
        stream_sequence=stream_sequence,
    )


def portfolio_to_proto(summary: features.PortfolioSummary, stream_sequence: int) -> mpb.Portfolio:
    return mpb.Portfolio(
        as_of_ns=summary.as_of_ns,
        window_days=summary.window_days,
        borrower_count=summary.borrower_count,
        coverage=[
            mpb.CoverageBucket(upper_bound=bound, count=count)
            for bound, count in summary.coverage_counts
        ],
        coverage_undefined_count=summary.coverage_undefined_count,
        active_alerts=[
            mpb.RuleCount(rule=rule, count=count) for rule, count in summary.active_alert_counts
        ],
        late_flow_count=summary.late_flow_count,
        pair_overflow_count=summary.pair_overflow_count,
        stream_sequence=stream_sequence,
    )
