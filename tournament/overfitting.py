"""Overfitting and robustness columns for the results table (pure pandas/numpy/scipy).

`add_overfitting_columns(results, returns)` adds, for every `ok` row of the tournament:

* ``n_trials``       N = number of distinct (selection, engine, profile, rebalance)
                     configurations with an ok path, the buy-and-hold benchmark excluded (a
                     reference, not a trial). Simulators are replicas of the same trial (the
                     same weights and trades, executed by another engine), so they do not
                     multiply N; a strategy with fallback windows is still a trial.
* ``stats_simulator``  the ONE simulator whose paths the trial statistics below are computed
                     on: the lowest-fidelity simulator that ran every trial ok (fidelity
                     order custom < vectorbt < cvxportfolio < nautilus). If none ran them
                     all, the one that ran the most (lowest fidelity on ties); the trials it
                     lacks get NaN. The statistics are joined to every simulator's ok row of
                     the same configuration, so ``dsr`` of a strategy is identical at every
                     fidelity tier.
* ``dsr``            Deflated Sharpe Ratio (tournament.stats.deflated_sharpe_ratio) of the
                     trial's per-period Sharpe on ``stats_simulator`` (``sharpe /
                     sqrt(periods)``, risk-free included) against SR0 = E[max Sharpe of N
                     zero-skill trials], with ``sharpe_variance`` = sample variance (ddof=1)
                     of the per-period Sharpes of the N trials, and the trial's own n_obs /
                     skew / kurtosis (non-excess) from its daily returns.
* ``n_effective_trials``  number of correlation clusters among the N trials' daily return
                     series on ``stats_simulator``, aligned by date
                     (tournament.stats.effective_number_of_trials, default threshold 0.5);
                     1 <= N_eff <= N.
* ``dsr_effective``  the DSR with N = n_effective_trials (same variance).
* ``pbo``            Probability of Backtest Overfitting by CSCV, ONE value per simulator,
                     computed over the T x S matrix of that simulator's ok strategies x
                     rebalance modes (S columns, benchmark excluded), put on every ok row
                     of that simulator. 16 splits, or the largest even number <= T if T < 16;
                     dates where any column is missing are dropped (CSCV needs a full
                     matrix). NaN with fewer than 2 strategies or fewer than 2 dates.
                     In a race (a ``race_tier`` column: tournament.race), a simulator that
                     ran only the promoted strategies gets the PBO of ``stats_simulator``
                     (the complete cheap-tier matrix) instead: the finalists were selected.
* ``friction_decay`` ``1 - sharpe / sharpe_0bps``: the share of the Sharpe ratio the
                     configured costs take away. ``sharpe_0bps`` (stage2.results_frame) is the
                     same strategy, rebalance mode and trades simulated at 0 bps; NaN when
                     it is 0 or NaN.
* ``simulator_sharpe_gap``  ``1 - Sharpe(highest-fidelity simulator that ran ok) /
                     Sharpe(custom)`` for the same (selection, engine, profile, rebalance),
                     fidelity order custom < vectorbt < cvxportfolio < nautilus: numerical
                     disagreement between simulators (every simulator uses the same costs;
                     this column was called friction_decay before it was measured for what it
                     is); the same value on every ok simulator row of that strategy; NaN when
                     only custom ran (or custom did not run / Sharpe is 0 or NaN).
* ``temporal_fragility``  ``window_sharpe_std / |window_sharpe_mean|``: the coefficient of
                     variation of the per-window Sharpe ratios, which is exactly
                     tournament.stats.temporal_fragility over the finite window Sharpes
                     (metrics.compute_metrics drops undefined windows before taking the
                     mean and the ddof=1 std). NaN with < 2 windows or a zero mean.
* ``kendall_tau``    Kendall tau-b between this simulator's Sharpe and custom's Sharpe over
                     the strategies (benchmark excluded), per (simulator, rebalance); custom
                     rows get 1.0 whenever the ranking is defined (>= 2 strategies, not all
                     tied).

Nothing is clipped; NaN where a statistic is undefined. Rows that are not ok get NaN in
all columns; benchmark rows get only ``temporal_fragility``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import stats
from .schema import BENCHMARK_SELECTION, OK, RESULT_KEYS, STRATEGY_KEYS
from .strategy_paths import SIMULATOR_FIDELITY
BASELINE_SIMULATOR = "custom"
PBO_SPLITS = 16
OVERFITTING_COLUMNS = ("n_trials", "stats_simulator", "n_effective_trials", "dsr",
                       "dsr_effective", "pbo", "friction_decay", "simulator_sharpe_gap",
                       "temporal_fragility", "kendall_tau")

__all__ = ["add_overfitting_columns", "returns_matrix",
           "OVERFITTING_COLUMNS", "SIMULATOR_FIDELITY"]


def _fidelity(simulator: str) -> int:
    # Unknown simulators rank above the known ones (assumed higher fidelity), by name.
    try:
        return SIMULATOR_FIDELITY.index(simulator)
    except ValueError:
        return len(SIMULATOR_FIDELITY)


def returns_matrix(returns: pd.DataFrame, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(dates, T x S matrix) of daily net returns for `rows` (one column per row, in order).

    Dates are the union over the selected rows, sorted; missing days are NaN.
    """
    n = len(rows)
    if n == 0 or returns.empty:
        return np.array([], dtype="datetime64[ns]"), np.full((0, n), np.nan)
    idx = pd.MultiIndex.from_frame(rows[RESULT_KEYS].astype(str))
    if not idx.is_unique:
        raise ValueError("results rows are not unique on " + ", ".join(RESULT_KEYS))
    col = idx.get_indexer(pd.MultiIndex.from_frame(returns[RESULT_KEYS].astype(str)))
    keep = col >= 0
    dates, code = np.unique(pd.to_datetime(returns["date"]).to_numpy()[keep],
                            return_inverse=True)
    mat = np.full((dates.size, n), np.nan)
    mat[code, col[keep]] = returns["net_return"].to_numpy(dtype=float)[keep]
    return dates, mat


def _moments(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column (n_obs, skew, kurtosis) by the formulas of
    tournament.stats.sharpe_ratio_moments, vectorised for complete columns (that function
    handles the others). Not replaced by it: the vectorised sums round differently in the
    last bits, and the recorded statistics (tests/test_golden.py) are these."""
    n_cols = mat.shape[1]
    n_obs = np.isfinite(mat).sum(axis=0).astype(float)
    skew = np.full(n_cols, np.nan)
    kurt = np.full(n_cols, np.nan)
    full = (n_obs == mat.shape[0]) & (n_obs >= 2)
    if full.any():
        x = mat[:, full]
        const = np.all(x == x[0], axis=0)
        d = x - x.mean(axis=0)
        m2 = (d**2).mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            sk = (d**3).mean(axis=0) / m2**1.5
            ku = (d**4).mean(axis=0) / m2**2
        skew[full] = np.where(const, np.nan, sk)
        kurt[full] = np.where(const, np.nan, ku)
    for j in np.flatnonzero(~full):
        _, n, skew[j], kurt[j] = stats.sharpe_ratio_moments(mat[:, j])
        n_obs[j] = n
    return n_obs, skew, kurt


def _pbo(mat: np.ndarray) -> float:
    """One CSCV PBO over the columns of `mat` (rows with any NaN dropped)."""
    if mat.shape[1] < 2:
        return math.nan
    full = mat[np.all(np.isfinite(mat), axis=1)]
    n_obs = full.shape[0]
    n_splits = min(PBO_SPLITS, n_obs - n_obs % 2)
    if n_splits < 2:
        return math.nan
    return stats.probability_of_backtest_overfitting(full, n_splits=n_splits).pbo


def stats_simulator(trials: pd.DataFrame) -> str:
    """The lowest-fidelity simulator that ran every trial configuration ok (or, if none did,
    the one that ran the most; lowest fidelity on ties). One rule for the DSR and the
    confidence set: tournament.strategy_paths.reference_simulator."""
    from .strategy_paths import reference_simulator
    return reference_simulator(trials)


def _add_trial_statistics(out: pd.DataFrame, trials: pd.DataFrame, t_idx: np.ndarray,
                          returns: pd.DataFrame, cols: dict, sqrt_p: float) -> None:
    """n_trials, stats_simulator, dsr, n_effective_trials, dsr_effective (module docstring):
    computed once on one simulator's paths, joined to every simulator's rows."""
    keys4 = [*STRATEGY_KEYS, "rebalance"]
    sim = stats_simulator(trials)
    base = trials[trials["simulator"] == sim].drop_duplicates(keys4)
    n_trials = len(trials.drop_duplicates(keys4))
    _, mat = returns_matrix(returns, base)
    # DSR inputs: per-period Sharpe of each trial, its own moments from its daily returns.
    sr = base["sharpe"].to_numpy(dtype=float) / sqrt_p
    n_obs, skew, kurt = _moments(mat)
    finite_sr = sr[np.isfinite(sr)]
    if len(base) == 1:
        variance = 0.0   # no selection: SR0 = 0 whatever the variance
    else:
        variance = float(np.var(finite_sr, ddof=1)) if finite_sr.size > 1 else math.nan
    n_eff = stats.effective_number_of_trials(mat, method="onc")
    per = base[keys4].copy()
    for name, n in (("dsr", n_trials), ("dsr_effective", n_eff)):
        dsr, _ = stats.deflated_sharpe_ratio(sharpe=sr, n_obs=n_obs, skew=skew, kurtosis=kurt,
                                             n_trials=n, sharpe_variance=variance)
        per[name] = np.asarray(dsr, dtype=float)
    joined = trials[keys4].merge(per, on=keys4, how="left")
    out.iloc[t_idx, cols["n_trials"]] = float(n_trials)
    out.iloc[t_idx, cols["n_effective_trials"]] = float(n_eff)
    out.iloc[t_idx, cols["dsr"]] = joined["dsr"].to_numpy(dtype=float)
    out.iloc[t_idx, cols["dsr_effective"]] = joined["dsr_effective"].to_numpy(dtype=float)
    out.iloc[t_idx, cols["stats_simulator"]] = sim


def add_overfitting_columns(results: pd.DataFrame, returns: pd.DataFrame, *,
                            periods: int = 252) -> pd.DataFrame:
    """A copy of `results` with the columns in OVERFITTING_COLUMNS (see module docstring).

    `results`/`returns` are `stage2.results_frame`'s outputs; `periods` must be the
    annualisation used for the `sharpe` column (config.annualization).
    """
    out = results.copy()
    for col in OVERFITTING_COLUMNS:
        out[col] = np.nan
    out["stats_simulator"] = pd.Series(None, index=out.index, dtype=object)
    if out.empty:
        return out
    ok = (out["status"] == OK).to_numpy()
    bench = (out["selection"] == BENCHMARK_SELECTION).to_numpy()
    trial = ok & ~bench
    sqrt_p = math.sqrt(periods)

    # temporal fragility: CV of the window Sharpes, every ok row (benchmark included).
    mean = out["window_sharpe_mean"].to_numpy(dtype=float)
    std = out["window_sharpe_std"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        tf = np.where(mean != 0, std / np.abs(mean), np.nan)
    out["temporal_fragility"] = np.where(ok & np.isfinite(tf), tf, np.nan)

    t_idx = np.flatnonzero(trial)
    if t_idx.size == 0:
        return out
    trials = out.iloc[t_idx]
    cols = {c: out.columns.get_loc(c) for c in OVERFITTING_COLUMNS}
    _add_trial_statistics(out, trials, t_idx, returns, cols, sqrt_p)
    n_trials = t_idx.size
    _, mat = returns_matrix(returns, trials)

    # PBO: one per simulator over its strategies x rebalance modes.
    sims = trials["simulator"].to_numpy()
    pbo = np.full(n_trials, np.nan)
    for sim in pd.unique(sims):
        m = sims == sim
        pbo[m] = _pbo(mat[:, m])
    # A race (tournament.race) simulates the dear tiers on the finalists only: a PBO over
    # the finalists would be computed after the selection it is meant to judge. Those
    # simulators get the PBO of the complete cheap-tier matrix (stats_simulator's).
    if "race_tier" in trials:
        ref = out.iloc[t_idx[0], cols["stats_simulator"]]
        keys4 = [*STRATEGY_KEYS, "rebalance"]
        n_all = len(trials.drop_duplicates(keys4))
        for sim in pd.unique(sims):
            m = sims == sim
            if sim != ref and len(trials[m].drop_duplicates(keys4)) < n_all:
                pbo[m] = pbo[sims == ref][0] if (sims == ref).any() else math.nan
    out.iloc[t_idx, cols["pbo"]] = pbo

    # Friction decay: Sharpe at the configured costs vs the same trades at 0 bps.
    if "sharpe_0bps" in trials:
        out.iloc[t_idx, cols["friction_decay"]] = [
            stats.friction_decay(s, s0) for s, s0 in
            zip(trials["sharpe"].to_numpy(dtype=float), trials["sharpe_0bps"].to_numpy(dtype=float))]

    # Simulator Sharpe gap: highest-fidelity ok simulator vs custom, per strategy x rebalance.
    keys4 = [*STRATEGY_KEYS, "rebalance"]
    tr = trials[[*keys4, "simulator", "sharpe"]].copy()
    tr["_fid"] = [_fidelity(s) for s in tr["simulator"]]
    custom_sr = (tr[tr["simulator"] == BASELINE_SIMULATOR].drop_duplicates(keys4)
                 .set_index(keys4)["sharpe"].rename("_custom"))
    high = (tr.sort_values(["_fid", "simulator"], kind="stable").drop_duplicates(keys4, keep="last")
            .set_index(keys4)[["simulator", "sharpe"]]
            .rename(columns={"simulator": "_high_sim", "sharpe": "_high"}))
    per = high.join(custom_sr, how="left")
    per["_decay"] = [stats.friction_decay(h, c) if sim != BASELINE_SIMULATOR and np.isfinite(c)
                     else math.nan
                     for sim, h, c in zip(per["_high_sim"], per["_high"], per["_custom"])]
    decay = tr[keys4].join(per["_decay"], on=keys4)["_decay"].to_numpy(dtype=float)
    out.iloc[t_idx, cols["simulator_sharpe_gap"]] = decay

    # Kendall tau of each simulator's Sharpe ranking vs custom's, per rebalance.
    wide = tr.set_index([*STRATEGY_KEYS, "rebalance", "simulator"])["sharpe"].unstack(
        ["rebalance", "simulator"])
    tau = np.full(n_trials, np.nan)
    rebal = tr["rebalance"].to_numpy()
    for rebalance, sim in wide.columns:
        if (rebalance, BASELINE_SIMULATOR) not in wide.columns:
            continue
        value = stats.kendall_tau(wide[(rebalance, sim)].to_numpy(dtype=float),
                                  wide[(rebalance, BASELINE_SIMULATOR)].to_numpy(dtype=float))
        tau[(rebal == rebalance) & (sims == sim)] = value
    out.iloc[t_idx, cols["kendall_tau"]] = tau
    return out
