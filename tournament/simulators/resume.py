"""Continuing a simulated path instead of simulating it again (what a nightly run saves).

A nightly run appends days, so every strategy's path grows; its days before the old last day
are unchanged whenever everything they read is unchanged. For each simulated path a
`PathEnd` keeps the simulator's book at the close of the day before the path's last day, the
results of the days before the last day, and the digest of everything those days read
(`prefix_digest`: the strategy's targets and rebalance dates up to that day, the return rows,
the assets, costs, tolerance, rebalance mode and the simulator's code). A longer path whose
digest at that day is the same continues from the book (`tournament.stage2
.simulate_pair_continuing`); any difference (a corrected price, a recomputed cell, other
costs, new code) means a full simulation. The old last day is simulated again: as a last day
it did not trade as it now may (daily and tolerance modes never trade on the last day).

Books are dataclasses of numpy arrays whose first axis is the strategy, so one strategy's
book is a row (`state_row`) and a batch is their concatenation (`stack_states`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class PathEnd:
    """One strategy's path as a longer one continues it (see the module docstring)."""
    last_date: pd.Timestamp       # the path's last day (simulated again when continued)
    prefix: str                   # prefix_digest at last_date
    state: Any                    # the simulator's book (one row) at the close before it
    net_returns: np.ndarray       # the days before last_date
    turnover: np.ndarray
    costs: np.ndarray


def state_row(state: Any, s: int) -> Any:
    return type(state)(**{f.name: np.array(getattr(state, f.name)[s:s + 1])
                          for f in fields(state)})


def stack_states(states: list[Any]) -> Any:
    first = states[0]
    return type(first)(**{f.name: np.concatenate([getattr(x, f.name) for x in states])
                          for f in fields(first)})


def returns_digest(returns: np.ndarray, dates: pd.DatetimeIndex, assets, start: int,
                   last: int) -> str:
    """What a path's days [start, last] read of the data: those rows, dates and asset names."""
    rows = returns[start:last + 1]
    h = hashlib.sha256()
    h.update(dates[start:last + 1].asi8.tobytes() + str(rows.dtype).encode())
    h.update("\x1f".join(assets).encode())
    h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()


def prefix_digest(*, targets: np.ndarray, rebalance_rows: np.ndarray, last: int,
                  dates: pd.DatetimeIndex, returns_fp: str, settings: tuple) -> str:
    """Digest of what one strategy's path reads up to row `last`: its targets (K x N) of the
    rebalance days on or before `last`, those days' dates, the return rows (`returns_fp`, of
    rows [start, last]) and `settings` (rebalance mode, simulator and its code, costs,
    tolerance)."""
    upto = rebalance_rows <= last
    h = hashlib.sha256(repr(settings).encode())
    h.update(dates[rebalance_rows[upto]].asi8.tobytes())
    h.update(np.ascontiguousarray(targets[upto]).tobytes())
    h.update(returns_fp.encode())
    return h.hexdigest()[:24]
