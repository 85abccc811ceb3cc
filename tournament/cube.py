"""The weights cube: Stage 1's output and Stage 2's input.

One row per (window, selection, engine, profile) cell, with status (ok / fallback / failed /
unsupported), reason, solver, solver status, optimality residual, the `on_infeasible` policy
applied and solve time, and a full-universe weight vector (zeros on assets the selection
left out; zeros for failed and unsupported cells). A `fallback` cell could not be solved (its
reason says why) and holds the weights the declared policy gave it (`hold`: the previous
window's target, cash in a strategy's first window; `cash`: all cash, i.e. zero weights). Saved as
`weights_cube.pkl` (the spec's format) and as long-form Parquet (`weights_cube.parquet` +
`cells.parquet`) that any tool reads; both load back to an identical cube.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import (CELL_KEYS, CELLS, CUBE_WEIGHTS, FAILED, FALLBACK, OK,  # noqa: F401
                     STRATEGY_KEYS, TRADABLE, UNSUPPORTED, write_bytes, write_parquet)

CELL_COLUMNS = [*CELL_KEYS, "window_end", "status", "reason", "solver", "solver_status",
                "residual", "policy", "solve_seconds", "n_selected"]
_CELL_DEFAULTS = {"solver_status": "", "residual": np.nan, "policy": ""}   # older cubes


@dataclass(frozen=True, order=True)
class Cell:
    window: int       # window index
    selection: str
    engine: str
    profile: str

    @property
    def strategy(self) -> tuple[str, str, str]:
        return (self.selection, self.engine, self.profile)


@dataclass
class CellResult:
    cell: Cell
    status: str
    reason: str = ""
    solver: str = ""
    solve_seconds: float = 0.0
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # full universe
    solver_status: str = ""        # cvxpy status ("" for closed-form weights)
    residual: float = np.nan       # optimality residual, when the status rule computed one
    policy: str = ""               # the on_infeasible policy that resolved a fallback cell


@dataclass(frozen=True)
class StoredCell:
    """A cell's result as result storage keeps it: its weights by asset name, so it places
    into the universe of any later run that holds those assets (e.g. after a column with no
    data in this cell's window was added; the cell's key does not see such a column)."""
    result: CellResult              # as solved, its weights left out (`weights` holds them)
    assets: tuple[str, ...]         # the assets with a nonzero weight
    weights: np.ndarray             # their weights

    @classmethod
    def of(cls, result: CellResult, assets) -> "StoredCell":
        held = np.flatnonzero(result.weights)
        return cls(dataclasses.replace(result, weights=np.zeros(0)),
                   tuple(assets[i] for i in held), result.weights[held].copy())

    def placed(self, cell: Cell, assets: tuple[str, ...]) -> CellResult:
        """This result as `cell` of a run whose universe is `assets` (full-length weights)."""
        index = {a: i for i, a in enumerate(assets)}
        missing = [a for a in self.assets if a not in index]
        if missing:       # the key covers every held asset's name: a key bug, never hidden
            raise ValueError(f"stored cell {cell} holds assets not in this data: {missing[:5]}")
        weights = np.zeros(len(assets))
        weights[[index[a] for a in self.assets]] = self.weights
        return dataclasses.replace(self.result, cell=cell, weights=weights)


@dataclass(eq=False)
class WeightsCube:
    assets: tuple[str, ...]
    cells: pd.DataFrame          # CELL_COLUMNS, sorted by (selection, engine, profile, window_start)
    weights: np.ndarray          # n_cells x n_assets, aligned with `cells`

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_results(cls, results: list[CellResult], *, assets, window_starts, window_ends):
        results = sorted(results, key=lambda r: (r.cell.strategy, r.cell.window))
        n = len(assets)
        rows, weights = [], np.zeros((len(results), n))
        for i, r in enumerate(results):
            if r.status in TRADABLE:
                weights[i] = r.weights
            rows.append({"window_start": window_starts[r.cell.window],
                         "selection": r.cell.selection, "engine": r.cell.engine,
                         "profile": r.cell.profile, "window_end": window_ends[r.cell.window],
                         "status": r.status, "reason": r.reason, "solver": r.solver,
                         "solver_status": r.solver_status, "residual": float(r.residual),
                         "policy": r.policy, "solve_seconds": float(r.solve_seconds),
                         "n_selected": int((r.weights > 0).sum()) if r.status in TRADABLE
                         else 0})
        cells = pd.DataFrame(rows, columns=CELL_COLUMNS)
        return cls(tuple(assets), _normalise_cells(cells), np.ascontiguousarray(weights))

    # ------------------------------------------------------------------ queries
    @property
    def window_starts(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(sorted(self.cells["window_start"].unique()))

    @property
    def window_ends(self) -> pd.DatetimeIndex:
        ends = self.cells.groupby("window_start")["window_end"].first()
        return pd.DatetimeIndex(ends.loc[self.window_starts].to_numpy())

    def strategies(self) -> pd.DataFrame:
        """One row per strategy: ok if every window's cell is ok or fallback (else the first
        reason), and how many windows were resolved by the on_infeasible policy."""
        out = []
        for key, group in self.cells.groupby(STRATEGY_KEYS, sort=True):
            bad = group[~group["status"].isin(TRADABLE)]
            if bad.empty:
                status, reason = OK, ""
            elif (bad["status"] == UNSUPPORTED).all() and len(bad) == len(group):
                status, reason = UNSUPPORTED, bad["reason"].iloc[0]
            else:
                first = bad.iloc[0]
                status = FAILED
                reason = (f"{len(bad)}/{len(group)} windows not ok; first "
                          f"{pd.Timestamp(first['window_start']).date()}: {first['status']}: "
                          f"{first['reason']}")
            out.append({**dict(zip(STRATEGY_KEYS, key)), "status": status, "reason": reason,
                        "fallback_windows": int((group["status"] == FALLBACK).sum())})
        return pd.DataFrame(out, columns=[*STRATEGY_KEYS, "status", "reason", "fallback_windows"])

    def schedule(self, key: tuple[str, str, str]) -> np.ndarray:
        """Target weights of one strategy: n_windows x n_assets, in window order."""
        sel = np.flatnonzero((self.cells["selection"] == key[0]).to_numpy()
                             & (self.cells["engine"] == key[1]).to_numpy()
                             & (self.cells["profile"] == key[2]).to_numpy())
        if sel.size != len(self.window_starts):
            raise KeyError(f"strategy {key} not in cube")
        return self.weights[sel]   # cells are sorted by strategy then window

    def schedule_digest(self, key: tuple[str, str, str]) -> str:
        """Digest of a strategy's weight schedule (Stage 2 caches on this, not Stage 1 keys)."""
        h = hashlib.sha256(np.ascontiguousarray(self.schedule(key)).tobytes())
        h.update(self.window_starts.asi8.tobytes() + self.window_ends.asi8.tobytes())
        h.update("\x1f".join(self.assets).encode())
        return h.hexdigest()[:16]

    def equals(self, other: "WeightsCube", *, ignore_timing: bool = False) -> bool:
        """Same assets, cells and weights (optionally ignoring the solve_seconds column)."""
        drop = ["solve_seconds"] if ignore_timing else []
        return (self.assets == other.assets
                and self.cells.drop(columns=drop).equals(other.cells.drop(columns=drop))
                and np.array_equal(self.weights, other.weights))

    # ------------------------------------------------------------------ persistence
    def to_pickle(self, path: str | Path) -> None:
        write_bytes(path, pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    @staticmethod
    def from_pickle(path: str | Path) -> "WeightsCube":
        # Trust boundary: only load cubes this tool wrote into its own run directory.
        with open(path, "rb") as fh:
            cube = pickle.load(fh)
        if not isinstance(cube, WeightsCube):
            raise TypeError(f"{path} does not hold a WeightsCube")
        return cube

    def to_parquet(self, directory: str | Path) -> None:
        d = Path(directory)
        long = self.weights_long()
        write_parquet(d / CUBE_WEIGHTS, long)
        write_parquet(d / CELLS, self.cells)

    def weights_long(self) -> pd.DataFrame:
        n_cells, n_assets = self.weights.shape
        base = self.cells.loc[self.cells.index.repeat(n_assets), CELL_KEYS].reset_index(drop=True)
        base["asset"] = pd.Categorical(np.tile(self.assets, n_cells), categories=self.assets)
        base["weight"] = self.weights.reshape(-1)
        return base

    @staticmethod
    def from_parquet(directory: str | Path) -> "WeightsCube":
        d = Path(directory)
        cells = _normalise_cells(pd.read_parquet(d / CELLS))
        long = pd.read_parquet(d / CUBE_WEIGHTS)
        assets = tuple(long["asset"].cat.categories) if hasattr(long["asset"], "cat") \
            else tuple(dict.fromkeys(long["asset"]))
        n_assets = len(assets)
        if len(long) != len(cells) * n_assets:
            raise ValueError(f"{d}: {CUBE_WEIGHTS} has {len(long)} rows, expected "
                             f"{len(cells)} cells x {n_assets} assets")
        weights = long["weight"].to_numpy(dtype=np.float64).reshape(len(cells), n_assets)
        return WeightsCube(assets, cells, np.ascontiguousarray(weights))


def _normalise_cells(cells: pd.DataFrame) -> pd.DataFrame:
    cells = cells.assign(**{c: v for c, v in _CELL_DEFAULTS.items() if c not in cells})
    cells = cells[CELL_COLUMNS].copy()
    for col in ("window_start", "window_end"):
        cells[col] = pd.to_datetime(cells[col]).astype("datetime64[ns]")
    for col in ("selection", "engine", "profile", "status", "reason", "solver", "solver_status",
                "policy"):
        cells[col] = cells[col].astype(str)
    cells["solve_seconds"] = cells["solve_seconds"].astype(np.float64)
    cells["residual"] = cells["residual"].astype(np.float64)
    cells["n_selected"] = cells["n_selected"].astype(np.int64)
    return cells.sort_values([*STRATEGY_KEYS, "window_start"], kind="stable").reset_index(drop=True)
