"""core.flows: the cash-flow profile engine of in-loan monitoring (issue 15), pure.

Plain frozen dataclasses in (flows: client transactions with their posted legs, as the monitor
reconstructs them from the change stream; account facts), plain dataclasses out (a profile
per borrower, a portfolio summary, alert transitions); no I/O, no gRPC, no protobuf. The
monitor service (`tally monitor`) is a thin adapter around it (docs/design.md, "In-loan
monitoring: cash-flow profiles").

May import: `core` (the standard library besides); tests/test_layout.py holds it.

Public face: model (the inputs, the engine's configuration and limits, UTC days),
attribution (a flow as money moved between accounts, and what it is to each borrower),
schedule (a loan account's repayment schedule from its metadata, what falls due in a
window), buckets (a borrower's day in one currency), features (the profile's records and the
formulas that make them from sums), engine (`FlowEngine`: daily buckets per borrower,
profiles, the portfolio, checkpoints) and rules (alert rules from TOML, alerts on
transition).
"""
