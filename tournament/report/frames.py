"""The report's tables as frames and plain values (pure pandas; no formatting, no HTML).

The leaderboard itself is tournament.leaderboard.leaderboard_frame; these are the other
sections: simulator agreement, failures, fallback windows, status counts, the confidence
set and race summaries, the run summary items.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..leaderboard import KEYS, STRATEGY, is_baseline, leaderboard_frame, ok_rows
from ..schema import FAILED, FALLBACK, OK, TRADABLE, UNSUPPORTED
from .format import number

REFERENCE_SIMULATOR = "custom"
# The measure behind each column: the confidence set is about mean return while the
# leaderboard sorts by Sharpe, so the report says which one each column uses.
COLUMN_MEASURES = {
    "sharpe": "annualised Sharpe ratio of daily net returns; the leaderboard's sort key",
    "dsr": "Sharpe ratio: probability the true Sharpe beats the expected best of n_trials "
           "zero-skill trials (deflated Sharpe)",
    "dsr_effective": "Sharpe ratio: the same with the effective (clustered) number of trials",
    "pbo": "Sharpe ratio: probability that the in-sample best is below the median out of sample (CSCV)",
    "mcs": "mean daily net return: in the 95% model confidence set of the best strategies",
    "mcs_pvalue": "mean daily net return: smallest size at which the strategy stays in the set",
    "spa_pvalue": "mean daily net return: Hansen's SPA p-value for 'no strategy of this rebalance "
                  "mode beats all/baseline/equal_weight'",
    "stepm": "mean daily net return: beats all/baseline/equal_weight (same rebalance mode) "
             "after the Romano-Wolf step-down",
    "friction_decay": "Sharpe ratio: 1 - Sharpe(highest-fidelity simulator) / Sharpe(custom)",
    "temporal_fragility": "Sharpe ratio per window: std / |mean| across windows",
    "kendall_tau": "Sharpe ratio ranks: agreement of this simulator's ranking with custom's",
}


def simulators(results: pd.DataFrame) -> list[str]:
    """The simulators that ran, the reference (custom) first."""
    if results.empty:
        return []
    return sorted(results["simulator"].dropna().unique(),
                  key=lambda s: (s != REFERENCE_SIMULATOR, s))


def selections(results: pd.DataFrame) -> list[str]:
    """The selections that ran, in run order, the benchmark (not a selection) left out."""
    if results.empty:
        return []
    return [s for s in dict.fromkeys(results["selection"]) if s != "benchmark"]


def simulator_board(results: pd.DataFrame, simulator: str, *, top: int) -> pd.DataFrame:
    """The leaderboard of one simulator. The benchmark runs on the reference simulator only,
    so every other simulator's board shows it too, for comparison."""
    board = leaderboard_frame(results, top=top, simulator=simulator)
    bench = leaderboard_frame(results[results["selection"] == "benchmark"], top=0)
    if simulator != REFERENCE_SIMULATOR and not bench.empty:
        board = pd.concat([board, bench], ignore_index=True)
    return board


def column_measures(results: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, the measure behind it) for the statistics columns present."""
    return [(c, m) for c, m in COLUMN_MEASURES.items() if c in results.columns]


def agreement_frame(results: pd.DataFrame) -> pd.DataFrame:
    """Per strategy x rebalance: Sharpe and final equity per simulator, max rel. diff vs custom."""
    ok = ok_rows(results)
    if ok.empty or ok["simulator"].nunique() < 2:
        return pd.DataFrame()
    value_cols = [c for c in ("sharpe", "final_equity") if c in ok]
    wide = ok.pivot_table(index=[*STRATEGY, "rebalance"], columns="simulator",
                          values=value_cols, aggfunc="first")
    sims = sorted(ok["simulator"].unique(), key=lambda s: (s != REFERENCE_SIMULATOR, s))
    out = pd.DataFrame(index=wide.index)
    for metric in value_cols:
        for sim in sims:
            out[f"{metric} {sim}"] = wide[(metric, sim)] if (metric, sim) in wide else np.nan
    for metric in value_cols:
        if REFERENCE_SIMULATOR not in sims:
            out[f"max rel diff {metric}"] = np.nan
            continue
        ref = out[f"{metric} {REFERENCE_SIMULATOR}"]
        diffs = [((out[f"{metric} {s}"] - ref).abs() / ref.abs().where(ref.abs() > 1e-12))
                 for s in sims if s != REFERENCE_SIMULATOR]
        out[f"max rel diff {metric}"] = pd.concat(diffs, axis=1).max(axis=1, skipna=True)
    out = out.reset_index()
    sort_col = ("max rel diff final_equity" if "max rel diff final_equity" in out
                else out.columns[-1])
    return out.sort_values(sort_col, ascending=False, na_position="last", kind="stable"
                           ).reset_index(drop=True)


def failures_frames(results: pd.DataFrame, cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Stage 1 cells not ok, grouped by strategy + status + reason with a window count;
    Stage 2 rows not ok, grouped with the (rebalance/simulator) pairs they affect)."""
    cell_rows = pd.DataFrame()
    if not cells.empty and "status" in cells:
        bad = cells[~cells["status"].isin(TRADABLE)].copy()   # fallbacks: own section
        if not bad.empty:
            bad["reason"] = bad.get("reason", pd.Series("", bad.index)).fillna("").astype(str)
            cols = [c for c in (*STRATEGY, "status", "reason") if c in bad]
            agg = {"windows": ("status", "size")}
            if "solver" in bad:
                agg["solver"] = ("solver", lambda s: ", ".join(sorted({str(x) for x in s if x})))
            if "window_start" in bad:
                agg["first_window"] = ("window_start", "min")
            cell_rows = bad.groupby(cols, dropna=False, sort=True).agg(**agg).reset_index()
    result_rows = pd.DataFrame()
    if not results.empty and "status" in results:
        bad = results[results["status"] != OK].copy()
        if not bad.empty:
            bad["reason"] = bad["reason"].fillna("").astype(str)
            bad["pair"] = bad["rebalance"].astype(str) + "/" + bad["simulator"].astype(str)
            result_rows = (bad.groupby([*STRATEGY, "status", "reason"], dropna=False, sort=True)
                           .agg(pairs=("pair", lambda s: ", ".join(sorted(s))))
                           .reset_index())
    return cell_rows, result_rows


def fallback_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """Every window resolved by the on_infeasible policy: date, strategy, policy, reason."""
    if cells.empty or "status" not in cells:
        return pd.DataFrame()
    fb = cells[cells["status"] == FALLBACK]
    cols = [c for c in ("window_start", *STRATEGY, "policy", "solver_status", "reason") if c in fb]
    return fb.sort_values([*STRATEGY, "window_start"], kind="stable")[cols].reset_index(drop=True)


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Rows per status; ok, failed and unsupported always present (0 when none)."""
    out = {OK: 0, FAILED: 0, UNSUPPORTED: 0}
    if not frame.empty and "status" in frame:
        for k, v in frame["status"].value_counts().items():
            out[str(k)] = int(v)
    return out


def confidence_view(run: dict) -> dict[str, Any] | None:
    """What the report says about the confidence set: the opening sentence, the strategies
    in the set (best first) with the measures behind it, the StepM winners, the SPA p-value
    per rebalance mode and the bootstrap settings. None when results.parquet has no
    confidence columns (a run directory written before them)."""
    from ..confidence import STRATEGY_KEYS, confidence_sentence, confidence_summary
    results, returns = run["results"], run["returns"]
    summary = confidence_summary(results)
    if not summary["available"]:
        return None
    settings = (run["manifest"] or {}).get("confidence") or {}
    keys = list(STRATEGY_KEYS)
    ok = ok_rows(results)
    sim = settings.get("simulator")
    rows = ok[ok["simulator"] == sim] if sim in set(ok["simulator"]) else ok
    rows = rows[rows["mcs"].notna()].drop_duplicates(keys)
    if not returns.empty and "net_return" in returns:
        part = returns[returns["simulator"] == rows["simulator"].iloc[0]] if len(rows) else returns
        periods = ((run["manifest"] or {}).get("config") or {}).get("annualization", 252)
        mean = part.groupby(keys)["net_return"].mean().rename("mean_return_ann") * periods
        rows = rows.join(mean, on=keys)
    cols = [*keys, "mcs_pvalue", "stepm", *[c for c in ("mean_return_ann", "sharpe", "cagr")
                                           if c in rows]]
    in_set = rows[rows["mcs"].astype("boolean").fillna(False).to_numpy(dtype=bool)]
    in_set = in_set.sort_values("mcs_pvalue", ascending=False, kind="stable")[cols]
    spa = (rows.dropna(subset=["spa_pvalue"]).drop_duplicates("rebalance")
           .set_index("rebalance")["spa_pvalue"].to_dict())
    measure = ("All four columns (mcs, mcs_pvalue, spa_pvalue, stepm) are about mean daily net "
               "return (loss = negative daily net return), not Sharpe; the leaderboard sorts by "
               "Sharpe, so a strategy can lead it and be outside the set.")
    if settings:
        measure += (f" Paths of simulator {settings.get('simulator')} over {settings.get('n_obs')}"
                    f" days, {settings.get('bootstrap')} bootstrap with mean block "
                    f"{settings.get('block_size')} days, {settings.get('reps')} replications, "
                    f"seed {settings.get('seed')}, MCS size {settings.get('mcs_size')}, StepM "
                    f"size {settings.get('stepm_size')} (arch {settings.get('arch')}).")
    return {"sentence": confidence_sentence(summary["n_in_mcs"], summary["n_stepm"]),
            "in_set": in_set, "stepm": summary["stepm"], "spa": spa, "measure": measure,
            "notes": settings.get("notes") or [], "n_strategies": summary["n_strategies"]}


CACHE_UNITS = {"stage1": "cells", "stage2": "simulations"}


def cache_lines(cache: dict) -> list[tuple[str, str]]:
    """(stage, "N computed, M cached <unit>") of a manifest's cache section (older
    manifests without these counts show '?')."""
    return [(stage, f"{v.get('computed', '?')} computed, {v.get('cached', '?')} cached "
                    f"{CACHE_UNITS.get(stage, 'units')}"
                    + (f" ({v['continued']} of the computed continued from stored paths)"
                       if v.get("continued") else ""))
            for stage, v in cache.items() if isinstance(v, dict)]


def summary_items(run: dict) -> list[tuple[str, Any]]:
    """(label, value) of the run summary: ids, data, grid, timings; empty ones left out."""
    man, state = run["manifest"], run["state"]
    data = man.get("data", {})
    cfg = man.get("config", {})
    items = [("run id", man.get("run_id") or state.get("run_id")),
             ("status", state.get("status")),
             ("data source", data.get("source")),
             ("data fingerprint", data.get("fingerprint") or state.get("data_fingerprint")),
             ("period", f"{data.get('start', '?')} .. {data.get('end', '?')}" if data else None),
             ("days x assets", f"{data.get('days', '?')} x {data.get('assets', '?')}" if data else None),
             ("fidelity", cfg.get("fidelity")),
             ("simulators", ", ".join(cfg.get("simulators", []) or [])),
             ("selections", ", ".join(cfg.get("selections", []) or [])),
             ("engines", ", ".join(cfg.get("engines", []) or [])),
             ("profiles", ", ".join(cfg.get("profiles", []) or [])),
             ("rebalances", ", ".join(cfg.get("rebalances", []) or [])),
             ("config digest", man.get("config_digest") or state.get("config_digest"))]
    for k, v in (man.get("timings") or {}).items():
        items.append((f"time {k} (s)", number(v)))
    return [(k, v) for k, v in items if v not in (None, "")]


def race_view(man: dict) -> dict[str, Any] | None:
    """A race's summary (manifest `race`, tournament.race): the sentence, one row per tier."""
    race = man.get("race")
    if not race:
        return None
    st = race.get("settings", {})
    n, cap = race.get("n_strategies", 0), race.get("cap", 0)
    first = (race.get("tiers") or [{}])[0]
    mcs = race.get("mcs", {})
    sentence = (f"Racing: {n} strategies ran on the cheapest tier; promotions out of each "
                f"tier take the top {st.get('top_k')} plus the model confidence set "
                f"({mcs.get('n_in_mcs', '?')} strategies, on {mcs.get('simulator', '?')}); "
                f"that set held {first.get('set_size', '?')} at the first promotion, "
                f"capped at {cap} ({st.get('cap', 0):g} x {n}). A tier whose ranking agrees "
                f"with the previous one's below Kendall tau {st.get('min_tau')} is not used "
                f"to rank ({st.get('on_disagreement')}). The statistics (DSR trials, PBO, "
                "confidence set) use the complete cheapest tier.")
    cols = ["tier", "simulators", "ranked_by", "n_ran", "tau", "tau_against", "n_compared",
            "reliable", "action", "set_size", "cap", "n_promoted", "next_tier", "seconds"]
    rows = [{c: (", ".join(t[c]) if c == "simulators" else t.get(c)) for c in cols}
            for t in race.get("tiers", [])]
    return {"sentence": sentence, "tiers": pd.DataFrame(rows, columns=cols),
            "messages": [t.get("message", "") for t in race.get("tiers", [])]}


def equity_baselines(results: pd.DataFrame, simulator: str) -> pd.DataFrame:
    """The baselines an equity chart draws beside the top strategies: this simulator's,
    plus the benchmark (reference simulator only) once, each in its first rebalance mode."""
    ok = ok_rows(results)
    base = ok[is_baseline(ok)]
    base = base[(base["simulator"] == simulator) | (base["selection"] == "benchmark")]
    if not base.empty:
        base = base.sort_values(KEYS).drop_duplicates(STRATEGY)
    return base
