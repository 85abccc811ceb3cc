"""Which strategies cannot be told apart from the best, and which beat equal weight, after
the search: Hansen-Lunde-Nason's model confidence set, Hansen's SPA test and Romano-Wolf's
StepM, all from ``arch.bootstrap`` (pure numpy/pandas/arch; no Prefect, no Ray).

Inputs are the daily net-return paths of the distinct strategies (selection, engine,
profile, rebalance) under ONE simulator, the reference simulator of
``tournament.strategy_paths`` (the lowest-fidelity simulator that ran every strategy): the
simulators are replicas of one trial, not more evidence. The loss is the negative daily net
return, so every statistic here is about **mean daily net return**, not Sharpe (the
leaderboard's sort key): a high-Sharpe, low-volatility strategy can sit outside the set
while a volatile one with a higher mean sits inside.

Columns added to every ok, non-benchmark results row of a strategy (the same value on each
simulator's row; NaN / <NA> where undefined):

* ``mcs``         in (True) or out of the 95% model confidence set over all distinct
                  strategies, the baseline included: the set of strategies whose mean
                  return is statistically indistinguishable from the best one's.
* ``mcs_pvalue``  the MCS p-value: the smallest size at which the strategy is still in the
                  set (``mcs`` is ``mcs_pvalue > MCS_SIZE``, arch's rule).
* ``spa_pvalue``  Hansen's SPA p-value ("consistent" re-centring) for H0: no strategy of
                  this rebalance mode has a higher mean return than the raw-pool equal-weight
                  baseline ``all/baseline/equal_weight`` of the same rebalance mode. One value
                  per rebalance mode, on every strategy row of that mode (the baseline's too).
* ``stepm``       True when the strategy beats that baseline after the Romano-Wolf
                  step-down (family-wise error rate STEPM_SIZE); <NA> on the baseline itself.

Bootstrap: arch's stationary bootstrap (Politis-Romano) with a stated mean block length
(BLOCK_SIZE trading days; daily portfolio returns have volatility clustering, so an i.i.d.
bootstrap would understate the variance of mean differences), REPS replications and a fixed
SEED, so a rerun gives the same set. All are recorded in the manifest.

Two library facts that shape this module:

* Identical paths (e.g. equal weight from three engines, or the baseline and
  ``all/custom/equal_weight``) make arch's MCS divide 0 by 0. They are one model, so each
  group of paths equal within DUPLICATE_ATOL enters the MCS once and every member gets the
  group's result.
* arch 8.0.0's SPA and StepM compare *raw* mean loss differentials; their ``studentize``
  flag only enters the "consistent" re-centring threshold. So the SPA statistic here is the
  largest mean-return gain over the baseline, not the largest t-statistic.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .schema import OK
from .strategy_paths import STRATEGY_KEYS, StrategyPaths, strategy_paths

MCS_SIZE = 0.05            # 95% model confidence set
STEPM_SIZE = 0.05          # family-wise error rate of the StepM step-down
BLOCK_SIZE = 10            # mean block length of the stationary bootstrap, trading days
REPS = 1000                # bootstrap replications
SEED = 17                  # fixed, so the same run gives the same set
BOOTSTRAP = "stationary"
MCS_METHOD = "R"           # Hansen-Lunde-Nason's T_R statistic (arch's default)
SPA_PVALUE = "consistent"  # Hansen's recommended re-centring
DUPLICATE_ATOL = 1e-12     # paths closer than this (max abs daily difference) are one model
BASELINE_STRATEGY = ("all", "baseline", "equal_weight")
CONFIDENCE_COLUMNS = ("mcs", "mcs_pvalue", "spa_pvalue", "stepm")
LOSS = "negative daily net return"

__all__ = ["BootstrapSettings", "ConfidenceResult", "CONFIDENCE_COLUMNS",
           "add_confidence_columns", "confidence_sentence", "confidence_summary",
           "confidence_table", "model_confidence_set", "superior_to_benchmark"]


@dataclass(frozen=True)
class BootstrapSettings:
    """Everything that fixes the bootstrap results (recorded in the manifest)."""

    mcs_size: float = MCS_SIZE
    stepm_size: float = STEPM_SIZE
    block_size: int = BLOCK_SIZE
    reps: int = REPS
    seed: int = SEED
    bootstrap: str = BOOTSTRAP
    mcs_method: str = MCS_METHOD

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "spa_pvalue": SPA_PVALUE, "loss": LOSS,
                "duplicate_atol": DUPLICATE_ATOL}


DEFAULT_SETTINGS = BootstrapSettings()


# ============================================================================ array core
def _duplicate_groups(x: np.ndarray, atol: float = DUPLICATE_ATOL) -> np.ndarray:
    """Group index per column; columns within `atol` of a group's first column share it."""
    group = np.full(x.shape[1], -1)
    firsts: list[int] = []
    for j in range(x.shape[1]):
        for g, first in enumerate(firsts):
            if np.max(np.abs(x[:, j] - x[:, first]), initial=0.0) <= atol:
                group[j] = g
                break
        else:
            group[j] = len(firsts)
            firsts.append(j)
    return group


def model_confidence_set(returns, settings: BootstrapSettings = DEFAULT_SETTINGS
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(in_set, pvalue) per column of a finite T x S matrix of daily returns.

    arch's MCS on the losses ``-returns``, one column per group of identical paths;
    in_set = pvalue > settings.mcs_size. A single distinct path is the set (p-value 1).
    """
    from arch.bootstrap import MCS

    x = np.asarray(returns, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"returns must be 2-D (T x S), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("returns must be finite (drop dates with missing values first)")
    n_cols = x.shape[1]
    if n_cols == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    group = _duplicate_groups(x)
    firsts = np.array([np.flatnonzero(group == g)[0] for g in range(group.max() + 1)])
    if firsts.size == 1:
        return np.ones(n_cols, dtype=bool), np.ones(n_cols)
    mcs = MCS(-x[:, firsts], size=settings.mcs_size, reps=settings.reps,
              block_size=settings.block_size, method=settings.mcs_method,
              bootstrap=settings.bootstrap, seed=settings.seed)
    mcs.compute()
    per_group = mcs.pvalues["Pvalue"].reindex(range(firsts.size)).to_numpy(dtype=float)
    pvalue = per_group[group]
    return pvalue > settings.mcs_size, pvalue


def superior_to_benchmark(benchmark, models, settings: BootstrapSettings = DEFAULT_SETTINGS
                          ) -> tuple[float, np.ndarray]:
    """(SPA p-value, StepM flag per model) for daily returns: T benchmark, T x K models.

    H0 of the SPA: no model's mean return exceeds the benchmark's. StepM flags the models
    whose mean return exceeds it after the Romano-Wolf step-down at settings.stepm_size.
    Both use the same bootstrap draws (same seed and block size).
    """
    from arch.bootstrap import SPA, StepM

    bench = np.asarray(benchmark, dtype=float).ravel()
    mods = np.asarray(models, dtype=float)
    if mods.ndim == 1:
        mods = mods[:, None]
    if mods.shape[0] != bench.size:
        raise ValueError(f"benchmark has {bench.size} dates, models {mods.shape[0]}")
    if not (np.all(np.isfinite(bench)) and np.all(np.isfinite(mods))):
        raise ValueError("returns must be finite (drop dates with missing values first)")
    if mods.shape[1] == 0:
        return math.nan, np.zeros(0, dtype=bool)
    stepm = StepM(-bench, -mods, size=settings.stepm_size, block_size=settings.block_size,
                  reps=settings.reps, bootstrap=settings.bootstrap, seed=settings.seed)
    stepm.compute()
    superior = np.zeros(mods.shape[1], dtype=bool)
    superior[np.asarray(stepm.superior_models, dtype=int)] = True
    # StepM's first step is the SPA on every model; it leaves its SPA (public attribute
    # `spa`, same arguments and seed) reset to all models with the bootstrap draws cached,
    # so recomputing it gives SPA(-bench, -mods, ...) exactly, without a second bootstrap.
    spa: SPA = stepm.spa
    spa.subset(np.ones(mods.shape[1], dtype=bool))
    spa.compute()
    return float(spa.pvalues[SPA_PVALUE]), superior


# ============================================================================ tournament
@dataclass(frozen=True)
class ConfidenceResult:
    """One row per distinct strategy of the reference simulator, plus what was run."""

    table: pd.DataFrame          # STRATEGY_KEYS + CONFIDENCE_COLUMNS
    simulator: str | None
    n_obs: int                   # dates used by the MCS (complete across strategies)
    spa_pvalues: dict[str, float]
    settings: BootstrapSettings = DEFAULT_SETTINGS
    seconds: float = 0.0         # the computation, arch's import excluded
    import_seconds: float = 0.0  # loading arch (it imports arch.univariate and numba)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def manifest(self) -> dict[str, Any]:
        """JSON-able record for manifest.json."""
        from importlib import metadata
        try:
            arch_version = metadata.version("arch")
        except metadata.PackageNotFoundError:
            arch_version = "not installed"
        summary = confidence_summary(self.table)
        return {**self.settings.to_dict(), "arch": arch_version, "simulator": self.simulator,
                "n_obs": self.n_obs, "n_strategies": int(len(self.table)),
                "n_in_mcs": summary["n_in_mcs"], "n_stepm": summary["n_stepm"],
                "spa_pvalues": {k: (None if not math.isfinite(v) else round(v, 6))
                                for k, v in self.spa_pvalues.items()},
                "baseline": "/".join(BASELINE_STRATEGY),
                "seconds": round(self.seconds, 3),
                "import_seconds": round(self.import_seconds, 3), "notes": list(self.notes)}


def _empty_table(strategies: pd.DataFrame) -> pd.DataFrame:
    table = strategies[list(STRATEGY_KEYS)].reset_index(drop=True).copy()
    table["mcs"] = pd.array([pd.NA] * len(table), dtype="boolean")
    table["mcs_pvalue"] = np.nan
    table["spa_pvalue"] = np.nan
    table["stepm"] = pd.array([pd.NA] * len(table), dtype="boolean")
    return table


def _complete_rows(x: np.ndarray) -> np.ndarray:
    return x[np.all(np.isfinite(x), axis=1)] if x.size else x


def confidence_table(results: pd.DataFrame, returns: pd.DataFrame, *,
                     settings: BootstrapSettings = DEFAULT_SETTINGS,
                     paths: StrategyPaths | None = None) -> ConfidenceResult:
    """MCS, SPA and StepM over the distinct strategies (see module docstring)."""
    start = time.perf_counter()
    import arch.bootstrap  # noqa: F401  (timed apart: loading arch alone takes seconds)
    import_seconds = time.perf_counter() - start
    start = time.perf_counter()
    paths = paths if paths is not None else strategy_paths(results, returns)
    table = _empty_table(paths.strategies)
    notes: list[str] = []
    if len(paths.missing):
        notes.append(f"{len(paths.missing)} strategies did not run ok under {paths.simulator}; "
                     "their confidence columns are NaN")
    full = _complete_rows(paths.returns)
    n_obs = int(full.shape[0])
    if paths.returns.shape[1] and n_obs < 2:
        notes.append(f"only {n_obs} dates where every strategy has a return: nothing computed")
    elif paths.returns.shape[1]:
        in_set, pvalue = model_confidence_set(full, settings)
        table["mcs"] = pd.array(in_set, dtype="boolean")
        table["mcs_pvalue"] = pvalue

    spa_pvalues: dict[str, float] = {}
    strategies = paths.strategies
    is_baseline = ((strategies["selection"] == BASELINE_STRATEGY[0])
                   & (strategies["engine"] == BASELINE_STRATEGY[1])
                   & (strategies["profile"] == BASELINE_STRATEGY[2])).to_numpy()
    stepm = table["stepm"].to_numpy(dtype=object)
    for rebalance in pd.unique(strategies["rebalance"]):
        in_mode = (strategies["rebalance"] == rebalance).to_numpy()
        base = np.flatnonzero(in_mode & is_baseline)
        others = np.flatnonzero(in_mode & ~is_baseline)
        if base.size == 0:
            notes.append(f"no ok {'/'.join(BASELINE_STRATEGY)} for rebalance {rebalance}: "
                         "spa_pvalue and stepm are NaN there")
            continue
        x = _complete_rows(paths.returns[:, np.concatenate([base[:1], others])])
        if x.shape[0] < 2 or others.size == 0:
            notes.append(f"rebalance {rebalance}: {others.size} strategies besides the baseline"
                         f" over {x.shape[0]} complete dates: no SPA / StepM")
            spa_pvalues[str(rebalance)] = math.nan
            continue
        p, superior = superior_to_benchmark(x[:, 0], x[:, 1:], settings)
        spa_pvalues[str(rebalance)] = p
        table.loc[in_mode, "spa_pvalue"] = p
        stepm[others] = superior
    table["stepm"] = pd.array([pd.NA if v is None or v is pd.NA else bool(v) for v in stepm],
                              dtype="boolean")
    return ConfidenceResult(table=table, simulator=paths.simulator, n_obs=n_obs,
                            spa_pvalues=spa_pvalues, settings=settings,
                            seconds=time.perf_counter() - start,
                            import_seconds=import_seconds, notes=tuple(notes))


def add_confidence_columns(results: pd.DataFrame, returns: pd.DataFrame, *,
                           settings: BootstrapSettings = DEFAULT_SETTINGS
                           ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(copy of `results` with CONFIDENCE_COLUMNS, manifest record).

    The strategy's values go on every ok, non-benchmark row of it (all simulators); other
    rows get NaN / <NA>.
    """
    out = results.drop(columns=[c for c in CONFIDENCE_COLUMNS if c in results.columns])
    res = confidence_table(results, returns, settings=settings)
    keys = list(STRATEGY_KEYS)
    if out.empty:
        merged = res.table.iloc[0:0]
    else:
        merged = out[keys].astype(str).merge(res.table, on=keys, how="left")
    ok = (out["status"] == OK).to_numpy() if "status" in out else np.zeros(len(out), bool)
    bench = (out["selection"] == "benchmark").to_numpy() if len(out) else ok
    keep = ok & ~bench
    for col in CONFIDENCE_COLUMNS:
        values = merged[col].to_numpy() if len(merged) else np.array([])
        if col in ("mcs", "stepm"):
            out[col] = pd.array([v if k else pd.NA for v, k in zip(values, keep)],
                                dtype="boolean")
        else:
            out[col] = np.where(keep, values.astype(float) if len(values) else values, np.nan)
    return out, res.manifest()


# ============================================================================ summaries
def confidence_summary(results: pd.DataFrame) -> dict[str, Any]:
    """N, M and the strategy lists behind the report's confidence sentence, read from the
    columns (one row per distinct strategy; the same on every simulator's rows)."""
    keys = list(STRATEGY_KEYS)
    empty = {"available": False, "n_in_mcs": 0, "n_stepm": 0, "in_mcs": [], "stepm": []}
    if results.empty or not set(CONFIDENCE_COLUMNS) <= set(results.columns):
        return empty
    rows = results[results["mcs"].notna()] if "mcs" in results else results.iloc[0:0]
    rows = rows.drop_duplicates(keys)
    if rows.empty:
        return empty
    label = rows[keys].astype(str).agg("/".join, axis=1)
    in_set = rows["mcs"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    beat = rows["stepm"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    order = np.argsort(-rows["mcs_pvalue"].to_numpy(dtype=float), kind="stable")
    in_mcs = [(label.iloc[i], float(rows["mcs_pvalue"].iloc[i])) for i in order if in_set[i]]
    winners = [label.iloc[i] for i in range(len(rows)) if beat[i]]
    return {"available": True, "n_in_mcs": int(in_set.sum()), "n_stepm": int(beat.sum()),
            "n_strategies": int(len(rows)), "in_mcs": in_mcs, "stepm": winners}


def confidence_sentence(n_in_mcs: int, n_stepm: int) -> str:
    """The report's opening sentence."""
    subject = "strategy is" if n_in_mcs == 1 else "strategies are"
    verb = "beats" if n_stepm == 1 else "beat"
    return (f"{n_in_mcs} {subject} statistically indistinguishable from the best; "
            f"{n_stepm} {verb} equal weight after correcting for the search.")
