"""The system tier: real processes on loopback (gunicorn with several workers, PostgreSQL, nginx,
Prometheus, MLflow, make targets, the docs' commands). It runs beside the unit and deploy tiers."""

import pathlib

import pytest

HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(items):
    """Every test of this tier carries its marker, and `slow` (it starts real processes)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.system)
            item.add_marker(pytest.mark.slow)
