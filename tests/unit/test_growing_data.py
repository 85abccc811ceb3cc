"""scripts/grow_prices.py (the nightly feed used by tests and demos) and reading a prices
file from an fsspec URL."""
from __future__ import annotations

import importlib.util

import fsspec
import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO
from tournament.data import load_file
from tournament.errors import DataError

spec = importlib.util.spec_from_file_location("grow_prices", REPO / "scripts" / "grow_prices.py")
grow_prices = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grow_prices)


@pytest.mark.parametrize("name,source", [("p.parquet", "sp500"), ("s.csv", "synthetic:6")])
def test_a_file_grown_night_by_night_equals_one_made_at_its_final_length(tmp_path, name,
                                                                          source):
    grown = tmp_path / name
    grow_prices.grow(grown, init=200, source=source)
    for _ in range(3):
        grow_prices.grow(grown, append=2, source=source)
    whole = tmp_path / f"whole-{name}"
    grow_prices.grow(whole, init=206, source=source)
    a, b = grow_prices.read_prices(grown), grow_prices.read_prices(whole)
    assert len(a) == 206 and a.index.is_monotonic_increasing and not a.index.has_duplicates
    pd.testing.assert_frame_equal(a, b)
    # Appending never changes the returns of the days already there.
    before = load_file(grown)
    grow_prices.grow(grown, append=1, source=source)
    after = load_file(grown)
    np.testing.assert_array_equal(after.returns[:before.n_days], before.returns)
    assert after.n_days == before.n_days + 1


def test_a_prices_file_reads_the_same_from_an_fsspec_url(tmp_path):
    local = tmp_path / "p.parquet"
    grow_prices.grow(local, init=120)
    fs = fsspec.filesystem("memory")
    fs.pipe("/feed/p.parquet", local.read_bytes())
    remote = load_file("memory://feed/p.parquet")
    np.testing.assert_array_equal(remote.returns, load_file(local).returns)
    assert remote.source == "memory://feed/p.parquet"
    with pytest.raises(DataError, match="memory://feed/missing.csv: file not found"):
        load_file("memory://feed/missing.csv")
    with pytest.raises(DataError, match="cannot open"):
        load_file("nosuch://feed/p.parquet")
