"""Tests of core.flows, the cash-flow profile engine."""
