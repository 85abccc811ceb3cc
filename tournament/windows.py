"""Rolling walk-forward windows, anchored in time.

A window's rebalance day is the LAST row of its training slice: weights are computed from
rows [rebalance - train + 1, rebalance] and traded at that day's close, so they first earn
row rebalance + 1. The test slice is the next `test` rows, or the rows the data has left:
a rebalance day opens its window as soon as it is in the data, so the newest window may be
short, even empty (a rebalance on the newest day: its target is what to trade at that
close). With test >= step (the defaults: 40 >= 20) every day after the first rebalance is
simulated, through the newest one.

The grid is anchored at the first training day, `start` (config [windows] start; default
the data's first day): rebalance days are start + train - 1 + k x step. Appending data
therefore only adds windows (and lengthens the newest one's test); it never moves one.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .config import WindowSpec
from .errors import DataError


@dataclass(frozen=True)
class Window:
    index: int
    rebalance: int   # row of the rebalance day (close of this day = trade time)
    train: int
    test: int        # test rows: `test` of the spec, fewer for the newest window

    @property
    def train_rows(self) -> slice:
        return slice(self.rebalance - self.train + 1, self.rebalance + 1)

    @property
    def test_rows(self) -> slice:
        return slice(self.rebalance + 1, self.rebalance + 1 + self.test)

    @property
    def test_end(self) -> int:
        """Last row (inclusive) of the test slice (the rebalance row for an empty test)."""
        return self.rebalance + self.test


def first_row(dates: pd.DatetimeIndex, start: str) -> int:
    """Row of the first training day: the first date on or after `start` ("" = row 0)."""
    if not start:
        return 0
    row = int(dates.searchsorted(pd.Timestamp(start), side="left"))
    if row >= len(dates):
        raise DataError(f"data error: [windows] start {start} is after the last date "
                        f"{dates[-1].date()}")
    return row


def make_windows(n_days: int, spec: WindowSpec, *, first: int = 0) -> list[Window]:
    """Windows over rows [first, n_days): one per rebalance day in the data."""
    windows = []
    rebalance = first + spec.train - 1
    while rebalance <= n_days - 1:
        windows.append(Window(len(windows), rebalance, spec.train,
                              min(spec.test, n_days - 1 - rebalance)))
        rebalance += spec.step
    if not windows:
        raise DataError(f"data error: {n_days - first} rows is fewer than one training window "
                        f"(train {spec.train})")
    return windows


def windows_for(dataset, spec: WindowSpec) -> list[Window]:
    """The dataset's windows, anchored at `spec.start`."""
    return make_windows(dataset.n_days, spec, first=first_row(dataset.dates, spec.start))
