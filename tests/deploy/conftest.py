"""The deploy tier: containers (a private dockerd, the image and its stand-ins, built at collection
in the background), the Compose stack and the Kubernetes manifests. The docker machinery loads only
here."""

import pathlib

import pytest
from docker_support import *  # noqa: F403 (its session fixtures and collection hook are this tier's)

HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(items):
    """Every test of this tier carries its marker, and `slow` (it starts real processes)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.deploy)
            item.add_marker(pytest.mark.slow)
