"""The load tier: what measures time or needs the CPU to itself (stress at a known capacity, the bench
ratios, the fault tests' timeouts, overload and shedding, rollout and scale-out under load). It
runs alone, after the other tiers (tests/tiers.py): nothing shares the CPU with it."""

import pathlib

import pytest

HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(items):
    """Every test of this tier carries its marker, and `slow` (it starts real processes)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.load)
            item.add_marker(pytest.mark.slow)
