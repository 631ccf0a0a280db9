"""Shared helpers for tests: real agent processes, waiting on conditions."""
