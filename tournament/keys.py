"""Cache keys that can be explained.

A key is the digest of a mapping of NAMED parts (cell identity, data fingerprint, the config
that affects the work, the code version of what computes it). The parts are kept next to each
result, so a rerun or `tournament compare` can say which part changed. Arrays are never hashed
here: the data enters through its fingerprint, a Stage 1 schedule through its digest.
"""
from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

from .config import TournamentConfig, digest_of
from .cube import Cell
from .registry import module_of

STAGE1_SHARED_MODULES = ("tournament.stage1", "tournament.selection", "tournament.estimation",
                         "tournament.windows", "tournament.engines.base",
                         "tournament.acceptance")
STAGE2_SHARED_MODULES = ("tournament.stage2", "tournament.simulators.base",
                         "tournament.simulators.orders", "tournament.simulators.custom")


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


def stage1_key_parts(cells: list[Cell], *, data_fingerprint: str, config: TournamentConfig,
                     window_dates: list[str]) -> dict:
    """Everything a chunk of Stage 1 cells depends on, by name."""
    selections = sorted({c.selection for c in cells})
    engines = sorted({c.engine for c in cells})
    profiles = sorted({c.profile for c in cells})
    return {
        "stage": 1,
        "cells": [[window_dates[c.window], c.selection, c.engine, c.profile] for c in cells],
        "data": data_fingerprint,
        "windows": [config.windows.train, config.windows.test, config.windows.step],
        "selection_params": {s: config.selection_params(s) for s in selections},
        "engine_params": {p: config.engine_params(p) for p in profiles},
        "code": {e: engine_code_version(e) for e in engines},
    }


def stage2_key_parts(schedule_digests: list[str], *, rebalance: str, simulator: str,
                     data_fingerprint: str, config: TournamentConfig) -> dict:
    """Everything a chunk of Stage 2 simulations depends on (weights by digest, not by cell)."""
    return {
        "stage": 2,
        "rebalance": rebalance,
        "simulator": simulator,
        "schedules": list(schedule_digests),
        "data": data_fingerprint,
        "costs": [config.costs.slippage_bps, config.costs.commission_bps],
        "tolerance": config.tolerance if rebalance == "tolerance" else None,
        "code": simulator_code_version(simulator),
    }


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
