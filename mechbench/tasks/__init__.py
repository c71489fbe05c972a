"""Deterministic, seeded datasets and prompt generators."""
