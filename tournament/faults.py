"""Fault injection for the reliability tests. FOR TESTS ONLY: off unless TOURNAMENT_FAULTS is set.

The reliability catalogue (tests/reliability) sets the environment variable
`TOURNAMENT_FAULTS` to a semicolon-separated list of rules; the runtime forwards every
TOURNAMENT_* variable to the Ray workers, so the rules reach the code that solves and simulates.

    engine:ENGINE/PROFILE[/SELECTION[/WINDOW]]:ACTION        ACTION = raise | nan
    simulator:SIMULATOR/SELECTION/ENGINE/PROFILE:ACTION      ACTION = raise | short

    engine:custom/min_variance/momentum:raise      the engine raises EngineError for those cells
    engine:skfolio/max_sharpe:nan                  the engine "returns" NaN weights (rejected)
    engine:custom/equal_weight/all/3:nan           only window index 3 of that strategy
    simulator:cvxportfolio/momentum/custom/min_variance:raise
    simulator:nautilus/all/custom/equal_weight:short   the path comes back one day short

`*` matches anything in a field. Unknown kinds/actions are a ValueError (a typo in a test
must not silently inject nothing). With the variable unset both hooks return None at the cost
of one dict lookup. Simulator rules never reach a simulator's own code: when any is set,
`tournament.registry.get_simulator` wraps the simulator (`with_simulator_faults`). A batched
simulator (custom, vectorbt) fails as a whole, as a real batched failure does: a matching
strategy's `raise` fails the batch, its `short` makes every path a day short. Results
computed under injected faults are kept apart in the cache (tasks.common.key_from_parameters
adds the rules to the key).
"""
from __future__ import annotations

import os
from dataclasses import replace
from functools import lru_cache

import numpy as np

from .engines.base import EngineError, EngineOutput
from .simulators.base import (BatchSimulator, Market, Orders, Paths, PerStrategySimulator,
                              Simulator, StrategyPath)

ENV = "TOURNAMENT_FAULTS"
ACTIONS = {"engine": ("raise", "nan"), "simulator": ("raise", "short")}
_FIELDS = {"engine": (2, 4), "simulator": (4, 4)}   # (min, max) path fields


@lru_cache(maxsize=8)
def parse_faults(text: str) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    """'kind:a/b/c:action;...' -> ((kind, (a, b, c), action), ...). Cached per env value."""
    rules = []
    for raw in text.split(";"):
        raw = raw.strip()
        if not raw:
            continue
        try:
            kind, path, action = (p.strip() for p in raw.split(":"))
        except ValueError:
            raise ValueError(f"{ENV}: rule {raw!r} is not KIND:PATH:ACTION") from None
        if kind not in ACTIONS:
            raise ValueError(f"{ENV}: unknown kind {kind!r} in {raw!r}; valid: engine, simulator")
        if action not in ACTIONS[kind]:
            raise ValueError(f"{ENV}: unknown action {action!r} for {kind} in {raw!r}; "
                             f"valid: {', '.join(ACTIONS[kind])}")
        fields = tuple(f.strip() for f in path.split("/"))
        lo, hi = _FIELDS[kind]
        if not lo <= len(fields) <= hi:
            raise ValueError(f"{ENV}: {kind} rule {raw!r} needs {lo}-{hi} path fields")
        rules.append((kind, fields, action))
    return tuple(rules)


def active_faults() -> str:
    """The raw rule text ('' when fault injection is off)."""
    return os.environ.get(ENV, "").strip()


def _match(pattern: tuple[str, ...], values: tuple[str, ...]) -> bool:
    return all(p in ("*", v) for p, v in zip(pattern, values))


def _find(kind: str, values: tuple[str, ...]) -> str | None:
    text = active_faults()
    if not text:
        return None
    for rule_kind, fields, action in parse_faults(text):
        if rule_kind == kind and _match(fields, values):
            return action
    return None


def engine_fault(cell) -> str | None:
    """'raise' | 'nan' | None for a Stage 1 cell (window, selection, engine, profile)."""
    return _find("engine", (cell.engine, cell.profile, cell.selection, str(cell.window)))


def with_engine_faults(engine, cell):
    """`engine` itself, or a wrapper injecting the rule that targets `cell` (Stage 1 asks
    per cell only while TOURNAMENT_FAULTS is set, so the solve path has no hook)."""
    action = engine_fault(cell)
    return engine if action is None else _FaultyEngine(engine, action)


class _FaultyEngine:
    """An engine whose `weights` fails as the rule says; everything else is the engine's.

    'raise': EngineError("injected solver failure"); 'nan': NaN weights that Stage 1's
    check rejects. Neither reaches a solver, so neither names one."""

    def __init__(self, engine, action: str) -> None:
        self._engine, self._action = engine, action

    def __getattr__(self, attribute: str):
        return getattr(self._engine, attribute)

    def weights(self, train: np.ndarray, *, profile: str, params) -> EngineOutput:
        if self._action == "raise":
            raise EngineError("injected solver failure")
        return EngineOutput(np.full(train.shape[1], np.nan), solver="")


def simulator_fault(simulator: str, key) -> str | None:
    """'raise' | 'short' | None for one strategy key (selection, engine, profile)."""
    return _find("simulator", (simulator, *map(str, key)))


def simulator_faults_active() -> bool:
    """True when TOURNAMENT_FAULTS holds at least one simulator rule."""
    text = active_faults()
    return bool(text) and any(kind == "simulator" for kind, _, _ in parse_faults(text))


def with_simulator_faults(simulator: Simulator) -> Simulator:
    """`simulator` with the TOURNAMENT_FAULTS simulator rules applied around its calls."""
    if isinstance(simulator, BatchSimulator):
        return _FaultyBatch(simulator)
    if isinstance(simulator, PerStrategySimulator):
        return _FaultyPerStrategy(simulator)
    raise TypeError(f"cannot inject faults into {type(simulator).__name__}")


def _short(path):
    """The same path(s) one day short: the last axis loses its last day."""
    return replace(path, net_returns=path.net_returns[..., :-1],
                   turnover=path.turnover[..., :-1], costs=path.costs[..., :-1])


class _FaultyBatch(BatchSimulator):
    def __init__(self, inner: BatchSimulator):
        self.inner, self.name, self.code_version = inner, inner.name, inner.code_version

    def simulate(self, market: Market, orders: Orders) -> Paths:
        actions = {simulator_fault(self.name, key) for key in orders.keys}
        if "raise" in actions:
            raise RuntimeError("injected simulator failure")
        paths = self.inner.simulate(market, orders)
        return _short(paths) if "short" in actions else paths


class _FaultyPerStrategy(PerStrategySimulator):
    def __init__(self, inner: PerStrategySimulator):
        self.inner, self.name, self.code_version = inner, inner.name, inner.code_version

    def prepare(self, market: Market, orders: Orders):
        return self.inner.prepare(market, orders), list(orders.keys)

    def simulate_one(self, ctx, s: int) -> StrategyPath:
        inner_ctx, keys = ctx
        action = simulator_fault(self.name, keys[s])
        if action == "raise":
            raise RuntimeError("injected simulator failure")
        path = self.inner.simulate_one(inner_ctx, s)
        return _short(path) if action == "short" else path
