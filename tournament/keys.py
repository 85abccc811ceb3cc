"""Cache keys that can be explained.

A key is the digest of a mapping of NAMED parts (cell identity, the fingerprint of the data
it reads, the config that affects the work, the code version of what computes it). The parts
are kept next to each result, so a rerun or `tournament compare` can say which part changed.

Point in time: a Stage 1 cell keys on its own training slice (`slice_fingerprint`), a Stage 2
simulation on its horizon rows (`horizon_fingerprint`) and its weight schedule's digest, never
on the whole returns matrix, so appending a day changes only the work that reads it. Work is
stored per unit (a cell, a simulation) under these keys; a chunk's key is only the digest of
its units' keys (flows.plan).
"""
from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .config import TournamentConfig, digest_of
from .cube import Cell
from .registry import module_of
from .selection import eligible

STAGE1_SHARED_MODULES = ("tournament.stage1", "tournament.selection", "tournament.estimation",
                         "tournament.windows", "tournament.engines.base",
                         "tournament.acceptance")
STAGE2_SHARED_MODULES = ("tournament.stage2", "tournament.simulators.base",
                         "tournament.simulators.orders", "tournament.simulators.custom",
                         "tournament.simulators.resume")


@lru_cache(maxsize=None)
def source_digest(module: str) -> str:
    """Hash of a module's source file, found without importing it (no heavy imports)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:12]


def engine_code_version(engine: str) -> str:
    return digest_of([source_digest(m) for m in (*STAGE1_SHARED_MODULES,
                                                 module_of("engine", engine))])


def simulator_code_version(simulator: str) -> str:
    return digest_of([source_digest(m) for m in (*STAGE2_SHARED_MODULES,
                                                 module_of("simulator", simulator))])


def slice_fingerprint(returns: np.ndarray, dates: pd.DatetimeIndex, assets, rows: slice) -> str:
    """What a Stage 1 cell reads: its training rows' dates, which assets are eligible there
    (tournament.selection.eligible), their names and their values. An asset that has no
    full history in the slice (e.g. a column added later) is not read, so it is not hashed."""
    train = returns[rows]
    mask = eligible(train)
    h = hashlib.sha256()
    h.update(dates[rows].asi8.tobytes() + str(train.dtype).encode())
    h.update("\x1f".join(a for a, keep in zip(assets, mask) if keep).encode())
    h.update(np.ascontiguousarray(train[:, mask]).tobytes())
    return h.hexdigest()[:16]


def horizon_fingerprint(returns: np.ndarray, dates: pd.DatetimeIndex, assets,
                        start: int, end: int) -> str:
    """What a Stage 2 path reads of the data: rows [start, end] (the horizon), every asset,
    with their dates and names."""
    rows = returns[start:end + 1]
    h = hashlib.sha256()
    h.update(dates[start:end + 1].asi8.tobytes() + str(rows.dtype).encode())
    h.update("\x1f".join(assets).encode())
    h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()[:16]


def cell_key_parts(cell: Cell, *, window_date: str, slice_fingerprint: str,
                   config: TournamentConfig) -> dict:
    """Everything one Stage 1 cell depends on, by name (its result is stored under this)."""
    return {
        "stage": 1,
        "cell": [window_date, cell.selection, cell.engine, cell.profile],
        "slice": slice_fingerprint,
        "train": config.windows.train,
        "selection_params": config.selection_params(cell.selection),
        "engine_params": config.engine_params(cell.profile),
        "code": engine_code_version(cell.engine),
    }


def stage1_chunk_parts(cell_keys: list[str]) -> dict:
    """A Stage 1 chunk is its cells: its key changes when a member's key does, or when the
    membership does (the cells themselves are then still found under their own keys)."""
    return {"stage": 1, "cells": list(cell_keys)}


def stage2_key_parts(schedule_digests: list[str], *, rebalance: str, simulator: str,
                     returns_fingerprint: str, config: TournamentConfig) -> dict:
    """Everything a chunk of Stage 2 simulations depends on (weights by digest, not by cell;
    the data by the fingerprint of the horizon rows the paths simulate)."""
    return {
        "stage": 2,
        "rebalance": rebalance,
        "simulator": simulator,
        "schedules": list(schedule_digests),
        "returns": returns_fingerprint,
        "costs": [config.costs.slippage_bps, config.costs.commission_bps],
        "tolerance": config.tolerance if rebalance == "tolerance" else None,
        "code": simulator_code_version(simulator),
    }


def simulation_key_parts(chunk_parts: dict, schedule_digest: str) -> dict:
    """One simulation of a Stage 2 chunk: the chunk's parts with its one schedule."""
    parts = {k: v for k, v in chunk_parts.items() if k != "schedules"}
    return {**parts, "schedule": schedule_digest}


def cache_key(parts: dict) -> str:
    return f"s{parts['stage']}-{digest_of(parts)}"


def explain_difference(a: dict, b: dict) -> list[str]:
    """Names of the key parts that differ between two key-part mappings."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


OUTPUT_MODULES = {"statistics": ("tournament.overfitting", "tournament.stats",
                                  "tournament.confidence", "tournament.strategy_paths"),
                  # the charts and the leaderboard / frames they draw from
                  "charts": ("tournament.report.charts", "tournament.report.frames",
                             "tournament.leaderboard")}


def outputs_key(kind: str, *frames, extra=None) -> str:
    """Key of a run's derived outputs (statistics, report charts): the digest of the frames
    they are computed from, plus the code that computes them. Unchanged results -> reused."""
    import pandas as pd
    h = hashlib.sha256()
    for frame in frames:
        h.update(repr((list(frame.columns), [str(t) for t in frame.dtypes])).encode())
        h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    parts = {"frames": h.hexdigest(), "extra": extra,
             "code": [source_digest(m) for m in OUTPUT_MODULES[kind]]}
    return f"out-{kind}-{digest_of(parts)}"
