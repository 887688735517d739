"""Fixtures of the chaos tests."""

import pytest

from tests.chaos.harness import fleets


@pytest.fixture
def every_mode(kafka_bootstrap, registry_dir, tmp_path):
    """One fleet per delivery mode on the session's broker and registry."""
    yield from fleets(kafka_bootstrap, registry_dir, tmp_path)
