"""Rolling walk-forward windows.

A window's rebalance day is the LAST row of its training slice: weights are computed from
rows [rebalance - train + 1, rebalance] and traded at that day's close, so they first earn
row rebalance + 1. The test slice is the next `test` rows. Only complete windows are made.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import WindowSpec
from .errors import DataError


@dataclass(frozen=True)
class Window:
    index: int
    rebalance: int   # row of the rebalance day (close of this day = trade time)
    train: int
    test: int

    @property
    def train_rows(self) -> slice:
        return slice(self.rebalance - self.train + 1, self.rebalance + 1)

    @property
    def test_rows(self) -> slice:
        return slice(self.rebalance + 1, self.rebalance + 1 + self.test)

    @property
    def test_end(self) -> int:
        """Last row (inclusive) of the test slice."""
        return self.rebalance + self.test


def make_windows(n_days: int, spec: WindowSpec) -> list[Window]:
    windows = []
    rebalance = spec.train - 1
    while rebalance + spec.test <= n_days - 1:
        windows.append(Window(len(windows), rebalance, spec.train, spec.test))
        rebalance += spec.step
    if not windows:
        raise DataError(f"data error: {n_days} rows is fewer than one window "
                        f"(train {spec.train} + test {spec.test})")
    return windows
