"""Deterministic simulators of the protocol cores, imported by tests and benches."""
