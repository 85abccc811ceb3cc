"""Shared fixtures: the bundled real data and small cubes, built once per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def sp500():
    from tournament.data import load_dataset
    return load_dataset("sp500")


@pytest.fixture(scope="session")
def default_cube(sp500):
    """The default grid on the bundled data (all engines, selections, profiles)."""
    from tournament.config import load_config
    from tournament.stage1 import run_stage1
    return run_stage1(sp500, load_config())
