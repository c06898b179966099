"""The lending scenario (issue 15): a seeded portfolio of small-business borrowers with planted
cash-flow patterns, posted through a real cluster with value dates, relayed to NATS and
profiled by `tally monitor`; the report scores its alerts against the ground truth and says
whether the monitor kept up (`python -m bench.lending`, bench/README.md)."""
