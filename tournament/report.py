"""Self-contained HTML report (and Markdown / table summaries) for one run directory.

Reads only the run directory files (results.parquet, returns.parquet, cells.parquet,
manifest.json, tournament_state.json); every file is optional, so a partial run still gets a
report. The HTML has no external references: CSS is inline and the charts are base64 PNGs
drawn with matplotlib's Agg backend. All text that comes from data is HTML-escaped.

Pure core code: no Prefect, no Ray (tasks/artifacts.py publishes these as Prefect artifacts).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

STRATEGY = ["selection", "engine", "profile"]
KEYS = [*STRATEGY, "rebalance", "simulator"]
BASELINE_ENGINE = "baseline"
REFERENCE_SIMULATOR = "custom"
# Metrics shown in the leaderboard (when present), then any extra statistics columns.
BOARD_METRICS = ["sharpe", "cagr", "volatility", "max_drawdown", "turnover", "costs",
                 "final_equity"]
KNOWN_EXTRAS = ["dsr", "pbo", "mcs", "mcs_pvalue", "spa_pvalue", "stepm", "friction_decay",
                "temporal_fragility", "kendall_tau"]
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
# Columns of results.parquet that are not "extra statistics" (everything else is shown).
BASE_COLUMNS = set(KEYS) | {"status", "reason", "sim_seconds", "total_return", "sortino",
                            "calmar", "var_95", "cvar_95", "turnover_per_rebalance",
                            "n_rebalances", "win_rate", "n_days", "window_sharpe_mean",
                            "window_sharpe_std", "race_tier", "race_promoted",
                            "race_reason"} | set(BOARD_METRICS)
PERCENT = {"cagr", "volatility", "max_drawdown", "total_return", "costs", "mean_return_ann"}


# ============================================================================ loading
def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The run directory's frames and JSON files (missing ones are empty / {})."""
    run = Path(run_dir)

    def frame(name: str) -> pd.DataFrame:
        path = run / name
        return pd.read_parquet(path) if path.is_file() else pd.DataFrame()

    def js(name: str) -> dict:
        path = run / name
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    return {"dir": run, "results": frame("results.parquet"), "returns": frame("returns.parquet"),
            "cells": frame("cells.parquet"), "manifest": js("manifest.json"),
            "state": js("tournament_state.json")}


def extra_columns(results: pd.DataFrame) -> list[str]:
    """Statistics columns beyond the base metrics (dsr, pbo, ... when present)."""
    known = [c for c in KNOWN_EXTRAS if c in results.columns]
    other = [c for c in results.columns if c not in BASE_COLUMNS and c not in known]
    return known + other


def _ok(results: pd.DataFrame) -> pd.DataFrame:
    if results.empty or "status" not in results:
        return results.iloc[0:0]
    return results[results["status"] == "ok"]


def _is_baseline(frame: pd.DataFrame) -> pd.Series:
    return frame["engine"] == BASELINE_ENGINE if "engine" in frame else pd.Series(False, frame.index)


def leaderboard_frame(results: pd.DataFrame, *, top: int = 10, simulator: str | None = None,
                      with_baselines: bool = True) -> pd.DataFrame:
    """Top `top` ok strategies by Sharpe (optionally for one simulator), then the baselines."""
    ok = _ok(results)
    if simulator is not None and not ok.empty:
        ok = ok[ok["simulator"] == simulator]
    if ok.empty:
        return ok
    ok = ok.sort_values("sharpe", ascending=False, kind="stable")
    base = _is_baseline(ok)
    best = ok[~base].head(top).assign(kind="strategy")
    best.insert(0, "rank", pd.array(range(1, len(best) + 1), dtype="Int64"))
    if not with_baselines:
        return best
    baselines = ok[base].assign(kind="baseline")
    baselines.insert(0, "rank", pd.array([pd.NA] * len(baselines), dtype="Int64"))
    return pd.concat([best, baselines], ignore_index=True)


def agreement_frame(results: pd.DataFrame) -> pd.DataFrame:
    """Per strategy x rebalance: Sharpe and final equity per simulator, max rel. diff vs custom."""
    ok = _ok(results)
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
        bad = cells[~cells["status"].isin(["ok", "fallback"])].copy()   # fallbacks: own section
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
        bad = results[results["status"] != "ok"].copy()
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
    fb = cells[cells["status"] == "fallback"]
    cols = [c for c in ("window_start", *STRATEGY, "policy", "solver_status", "reason") if c in fb]
    return fb.sort_values([*STRATEGY, "window_start"], kind="stable")[cols].reset_index(drop=True)


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    out = {"ok": 0, "failed": 0, "unsupported": 0}
    if not frame.empty and "status" in frame:
        for k, v in frame["status"].value_counts().items():
            out[str(k)] = int(v)
    return out


# ============================================================================ formatting
def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _fmt(value: Any, column: str = "") -> str:
    """Plain text for a cell (not escaped)."""
    if _is_missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if column in PERCENT:
            return f"{v * 100:.2f}%"
        if column.startswith("max rel diff"):
            return f"{v:.2e}" if abs(v) < 1e-3 and v != 0 else f"{v * 100:.3f}%"
        if abs(v) >= 1e4 or (abs(v) < 1e-3 and v != 0):
            return f"{v:.3e}"
        return f"{v:.4f}" if column.endswith("seconds") or abs(v) < 10 else f"{v:.2f}"
    if isinstance(value, pd.Timestamp):
        return str(value.date()) if value == value.normalize() else str(value)
    return str(value)


def _json_safe(value: Any) -> Any:
    if _is_missing(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isinf(v) else round(v, 6)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value if isinstance(value, (int, str, bool)) else str(value)


def html_table(frame: pd.DataFrame, *, columns: Iterable[str] | None = None,
               row_class: Any = None, empty: str = "none") -> str:
    if frame is None or frame.empty:
        return f'<p class="muted">{_esc(empty)}</p>'
    cols = [c for c in (columns or frame.columns) if c in frame.columns]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = []
    for _, row in frame.iterrows():
        cls = row_class(row) if row_class else ""
        cells = []
        for c in cols:
            v = row[c]
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            cells.append(f'<td{" class=num" if num else ""}>{_esc(_fmt(v, c))}</td>')
        body.append(f'<tr{f" class={cls!s}" if cls else ""}>{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def kv_table(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v, k))}</td></tr>" for k, v in items)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


# ============================================================================ charts
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'


def _label(row) -> str:
    return "/".join(str(row[k]) for k in KEYS if k in row)


def equity_chart(returns: pd.DataFrame, results: pd.DataFrame, simulator: str, *,
                 top: int = 5) -> str | None:
    """Top strategies (by Sharpe, this simulator) and the baselines as growth of 1."""
    if returns.empty or results.empty:
        return None
    board = leaderboard_frame(results, top=top, simulator=simulator, with_baselines=False)
    lines = [(r, False) for _, r in board.iterrows()]
    ok = _ok(results)
    base = ok[_is_baseline(ok)]
    # Baselines: this simulator's, plus the benchmark (custom only) once, first rebalance mode.
    base = base[(base["simulator"] == simulator) | (base["selection"] == "benchmark")]
    if not base.empty:
        base = base.sort_values(KEYS).drop_duplicates(STRATEGY)
    lines += [(r, True) for _, r in base.iterrows()]
    if not lines:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    ret = returns.copy()
    ret["date"] = pd.to_datetime(ret["date"])
    index = ret.set_index(KEYS).sort_index()
    for row, is_base in lines:
        key = tuple(row[k] for k in KEYS)
        try:
            part = index.loc[key]
        except KeyError:
            continue
        part = part.sort_values("date")
        equity = (1.0 + part["net_return"].astype(float)).cumprod()
        label = _label(row) + (f"  (Sharpe {row['sharpe']:.2f})" if not _is_missing(row.get("sharpe")) else "")
        ax.plot(part["date"], equity, lw=2.0 if is_base else 1.3,
                ls="--" if is_base else "-", color="black" if row["selection"] == "benchmark" else None,
                label=("baseline: " if is_base else "") + label)
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_ylabel("growth of 1 (net)")
    ax.set_title(f"Equity curves: top {len(board)} strategies and baselines ({simulator})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.autofmt_xdate()
    return _png(fig)


def heatmap_chart(results: pd.DataFrame, selection: str, simulator: str) -> str | None:
    """Sharpe, engine x profile, one panel per rebalance mode. NaN cells are hatched."""
    sub = results[(results["selection"] == selection) & (results["simulator"] == simulator)
                  & (results["engine"] != BASELINE_ENGINE)]
    if sub.empty:
        return None
    plt = _plt()
    from matplotlib.patches import Rectangle
    engines = list(dict.fromkeys(sub["engine"]))
    profiles = list(dict.fromkeys(sub["profile"]))
    rebalances = list(dict.fromkeys(sub["rebalance"]))
    ok = sub.assign(sharpe=sub["sharpe"].where(sub["status"] == "ok"))
    vals = ok["sharpe"].to_numpy(dtype=float)
    finite = vals[np.isfinite(vals)]
    lim = max(float(np.abs(finite).max()), 1e-6) if finite.size else 1.0
    width = max(4.0, 1.2 * len(profiles) + 1.0)
    fig, axes = plt.subplots(1, len(rebalances), figsize=(width * len(rebalances), 0.6 * len(engines) + 1.6),
                             squeeze=False)
    im = None
    for ax, reb in zip(axes[0], rebalances):
        grid = (ok[ok["rebalance"] == reb].pivot_table(index="engine", columns="profile",
                                                       values="sharpe", aggfunc="first", dropna=False)
                .reindex(index=engines, columns=profiles))
        data = grid.to_numpy(dtype=float)
        ax.add_patch(Rectangle((-0.5, -0.5), len(profiles), len(engines), facecolor="#f3f3f3",
                               hatch="///", edgecolor="#b0b0b0", lw=0, zorder=0))
        im = ax.imshow(np.ma.masked_invalid(data), cmap="RdYlGn", vmin=-lim, vmax=lim,
                       aspect="auto", zorder=1)
        for i in range(len(engines)):
            for j in range(len(profiles)):
                v = data[i, j]
                ax.text(j, i, f"{v:.2f}" if np.isfinite(v) else "n/a", ha="center", va="center",
                        fontsize=8, color="black" if np.isfinite(v) else "#777777", zorder=2)
        ax.set_xticks(range(len(profiles)), profiles, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(engines)), engines, fontsize=8)
        ax.set_xlim(-0.5, len(profiles) - 0.5)
        ax.set_ylim(len(engines) - 0.5, -0.5)
        ax.set_title(f"rebalance: {reb}", fontsize=9)
    fig.suptitle(f"Sharpe: selection {selection}, simulator {simulator} (hatched = not ok)",
                 fontsize=10, y=1.04)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="Sharpe")
    return _png(fig)


# ============================================================================ sections
CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#fafbfc}
main{max-width:1280px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6em;margin:.4em 0}h2{border-bottom:2px solid #dde3ea;padding-bottom:4px;
margin-top:1.8em}h3{margin:1.2em 0 .4em}
nav a{margin-right:12px;font-size:.9em}
table{border-collapse:collapse;font-size:.82em;margin:6px 0 14px;background:#fff}
th,td{border:1px solid #dde3ea;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.baseline td{background:#fff7e0;font-style:italic}
table.kv th{width:220px}.scroll{overflow-x:auto}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #dde3ea;
border-radius:6px;padding:8px 14px;min-width:120px}.card b{display:block;font-size:1.4em}
.ok b{color:#1a7f37}.failed b{color:#cf222e}.unsupported b{color:#9a6700}
.muted{color:#6a737d}img{max-width:100%;border:1px solid #dde3ea;background:#fff;margin:6px 0}
.headline{font-size:1.15em;font-weight:600}
pre{background:#fff;border:1px solid #dde3ea;padding:8px;overflow-x:auto;font-size:.8em}
"""


def _cards(title: str, counts: dict[str, int]) -> str:
    items = "".join(f'<div class="card {_esc(k)}"><b>{_esc(v)}</b>{_esc(k)}</div>'
                    for k, v in counts.items())
    return f"<h3>{_esc(title)}</h3><div class=cards>{items}</div>"


def confidence_view(run: dict) -> dict[str, Any] | None:
    """What the report says about the confidence set: the opening sentence, the strategies
    in the set (best first) with the measures behind it, the StepM winners, the SPA p-value
    per rebalance mode and the bootstrap settings. None when results.parquet has no
    confidence columns (a run directory written before them)."""
    from .confidence import STRATEGY_KEYS, confidence_sentence, confidence_summary
    results, returns = run["results"], run["returns"]
    summary = confidence_summary(results)
    if not summary["available"]:
        return None
    settings = (run["manifest"] or {}).get("confidence") or {}
    keys = list(STRATEGY_KEYS)
    ok = _ok(results)
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


def _measures(results: pd.DataFrame) -> list[tuple[str, str]]:
    return [(c, m) for c, m in COLUMN_MEASURES.items() if c in results.columns]


def _summary_items(run: dict) -> list[tuple[str, Any]]:
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
        items.append((f"time {k} (s)", _num(v)))
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


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{_esc(anchor)}"><h2>{_esc(title)}</h2>{body}</section>'


def _board_columns(results: pd.DataFrame) -> list[str]:
    return ["rank", *KEYS, *[c for c in BOARD_METRICS if c in results], *extra_columns(results)]


def chart_images(results: pd.DataFrame, returns: pd.DataFrame) -> dict[str, str]:
    """Every chart of the report as base64 PNG, by name (`equity/SIM`, `heatmap/SEL/SIM`).
    Drawing them is most of a report's cost, and they depend only on these two frames, so
    the flow caches them by the frames' digest."""
    if results.empty:
        return {}
    simulators = sorted(results["simulator"].dropna().unique())
    selections = [s for s in dict.fromkeys(results["selection"]) if s != "benchmark"]
    out = {}
    for sim in simulators:
        if png := equity_chart(returns, results, sim):
            out[f"equity/{sim}"] = png
        for sel in selections:
            if png := heatmap_chart(results, sel, sim):
                out[f"heatmap/{sel}/{sim}"] = png
    return out


def render_html(run_dir: str | Path, *, top: int = 10,
                charts: dict[str, str] | None = None) -> str:
    """The report page; `charts` (from chart_images) skips drawing when already known."""
    run = load_run(run_dir)
    results, returns, cells, man = run["results"], run["returns"], run["cells"], run["manifest"]
    simulators = (sorted(results["simulator"].dropna().unique(),
                         key=lambda s: (s != REFERENCE_SIMULATOR, s))
                  if not results.empty else [])
    selections = ([s for s in dict.fromkeys(results["selection"]) if s != "benchmark"]
                  if not results.empty else [])
    sections = []

    # --- summary: opens with the confidence-set sentence, then the list behind it
    conf = confidence_view(run)
    if conf is None:
        body = ('<p class="muted">No confidence set: results.parquet has no mcs / stepm '
                "columns.</p>")
    else:
        body = (f'<p class="headline" id="confidence-sentence">{_esc(conf["sentence"])}</p>'
                f'<p class="muted">{_esc(conf["measure"])}</p>'
                f"<h3>In the 95% model confidence set ({len(conf['in_set'])} of "
                f"{conf['n_strategies']}, best first)</h3>"
                + html_table(conf["in_set"], empty="none")
                + f"<h3>Beat equal weight after the Romano-Wolf step-down "
                  f"({len(conf['stepm'])})</h3>"
                + (f"<p>{_esc(', '.join(conf['stepm']))}</p>" if conf["stepm"]
                   else '<p class="muted">none</p>')
                + "<h3>SPA p-value per rebalance mode (H0: no strategy beats "
                  "all/baseline/equal_weight)</h3>" + kv_table(conf["spa"].items())
                + "".join(f'<p class="muted">{_esc(n)}</p>' for n in conf["notes"]))
    race = race_view(man)
    if race is not None:
        body += (f'<h3>Multi-fidelity race</h3><p id="race-sentence">{_esc(race["sentence"])}'
                 "</p>" + html_table(race["tiers"], empty="no tiers")
                 + "".join(f'<p class="muted">{_esc(m)}</p>' for m in race["messages"]))
    body += kv_table(_summary_items(run))
    body += _cards("Stage 2 results (strategy x rebalance x simulator)", status_counts(results))
    body += _cards("Stage 1 cells (window x selection x engine x profile)", status_counts(cells))
    if man.get("cache"):
        body += "<h3>Cache hits</h3>" + kv_table(
            (f"{stage} cached / tasks", f"{v.get('cached', '?')} / {v.get('tasks', '?')}")
            for stage, v in man["cache"].items() if isinstance(v, dict))
    sections.append(_section("summary", "Summary", body))

    # --- leaderboard
    body = (f'<p class="muted">Top {top} ok strategies by Sharpe for each simulator; baselines '
            "(raw-pool equal weight, S&amp;P 500 buy-and-hold) highlighted below them.</p>")
    cols = _board_columns(results)
    if _measures(results):
        body += "<h3>The measure behind each column</h3>" + kv_table(_measures(results))
    for sim in simulators:
        board = leaderboard_frame(results, top=top, simulator=sim)
        bench = leaderboard_frame(results[results["selection"] == "benchmark"], top=0)
        if sim != REFERENCE_SIMULATOR and not bench.empty:
            board = pd.concat([board, bench], ignore_index=True)
        body += f"<h3>Simulator: {_esc(sim)}</h3>" + html_table(
            board, columns=cols, empty="no ok results",
            row_class=lambda r: "baseline" if r.get("kind") == "baseline" else "")
    if not simulators:
        body += '<p class="muted">no results</p>'
    sections.append(_section("leaderboard", "Leaderboard", body))

    # --- equity curves
    body = ""
    charts = chart_images(results, returns) if charts is None else charts
    for sim in simulators:
        png = charts.get(f"equity/{sim}")
        if png:
            body += _img(png, f"equity curves {sim}")
    sections.append(_section("equity", "Equity curves", body or '<p class="muted">no returns</p>'))

    # --- heatmaps
    body = ""
    for sel in selections:
        for sim in simulators:
            png = charts.get(f"heatmap/{sel}/{sim}")
            if png:
                body += f"<h3>{_esc(sel)} / {_esc(sim)}</h3>" + _img(png, f"sharpe heatmap {sel} {sim}")
    sections.append(_section("heatmaps", "Sharpe heatmaps",
                             body or '<p class="muted">no strategies</p>'))

    # --- simulator agreement
    agree = agreement_frame(results)
    if agree.empty:
        body = ('<p class="muted">Only one simulator ran ('
                + _esc(", ".join(simulators) or "none")
                + "): nothing to compare. Run with fidelity medium or high to cross-check.</p>")
    else:
        worst = agree["max rel diff final_equity"].max() if "max rel diff final_equity" in agree else np.nan
        body = (f"<p>Sharpe and final equity per simulator for each strategy and rebalance mode; "
                f"the max relative difference is against <b>{REFERENCE_SIMULATOR}</b>. Worst final-"
                f"equity difference: <b>{_esc(_fmt(worst, 'max rel diff'))}</b>.</p>"
                + html_table(agree))
    sections.append(_section("agreement", "Simulator agreement", body))

    # --- failures
    cell_rows, result_rows = failures_frames(results, cells)
    body = ("<h3>Stage 1 cells not ok (cells.parquet)</h3>"
            + html_table(cell_rows, empty="every cell solved")
            + "<h3>Stage 2 results not ok (results.parquet)</h3>"
            + html_table(result_rows, empty="every simulation ok"))
    sections.append(_section("failures", "Failed and unsupported", body))
    fallbacks = fallback_frame(cells)
    body = ("<p>Windows that could not be solved and were resolved by the declared "
            "<code>on_infeasible</code> policy (not failures; results rows count them in "
            "<code>fallback_windows</code>).</p>"
            + html_table(fallbacks, empty="no fallback windows"))
    sections.append(_section("fallbacks", f"Fallback windows ({len(fallbacks)})", body))

    # --- manifest
    body = kv_table([("run id", man.get("run_id")), ("mode", man.get("mode")),
                     ("data fingerprint", (man.get("data") or {}).get("fingerprint")),
                     ("config digest", man.get("config_digest")),
                     ("result storage", man.get("result_storage"))])
    if man.get("timings"):
        body += "<h3>Time per stage (s)</h3>" + kv_table(
            (k, _num(v)) for k, v in man["timings"].items())
    if man.get("cache"):
        body += "<h3>Cache hits</h3><pre>" + _esc(json.dumps(man["cache"], indent=2, sort_keys=True)) + "</pre>"
    if man.get("versions"):
        body += "<h3>Library versions</h3>" + kv_table(sorted(man["versions"].items()))
    if man.get("data"):
        body += "<h3>Data</h3><pre>" + _esc(json.dumps(man["data"], indent=2, sort_keys=True, default=str)) + "</pre>"
    if man.get("config"):
        body += "<h3>Config</h3><pre>" + _esc(json.dumps(man["config"], indent=2, sort_keys=True, default=str)) + "</pre>"
    rest = {k: v for k, v in man.items() if k not in
            {"run_id", "mode", "data", "config", "config_digest", "result_storage", "timings",
             "cache", "versions"}}
    if rest:
        body += "<h3>Other manifest fields</h3><pre>" + _esc(json.dumps(rest, indent=2, sort_keys=True, default=str)) + "</pre>"
    if not man:
        body = '<p class="muted">manifest.json missing</p>'
    sections.append(_section("manifest", "Manifest", body))

    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("summary", "Summary"), ("leaderboard", "Leaderboard"), ("equity", "Equity"),
        ("heatmaps", "Heatmaps"), ("agreement", "Agreement"), ("failures", "Failures"),
        ("manifest", "Manifest")))
    title = f"Portfolio tournament report: {run['dir'].name}"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{_esc(title)}</h1><p class=\"muted\">generated {_esc(generated)} from "
            f"{_esc(run['dir'].resolve())}</p><nav>{nav}</nav>{''.join(sections)}"
            "</main></body></html>\n")


def write_report(run_dir: str | Path, *, top: int = 10,
                 charts: dict[str, str] | None = None) -> Path:
    """Write `report.html` (self-contained) into the run directory; returns its path."""
    run = Path(run_dir)
    text = render_html(run, top=top, charts=charts)
    path = run / "report.html"
    fd, tmp = tempfile.mkstemp(dir=run, prefix=".report.html.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


# ============================================================================ artifacts
def leaderboard_table(run_dir: str | Path, top: int = 20) -> list[dict]:
    """Top `top` strategies by Sharpe (all simulators) plus the baselines, JSON-safe rows."""
    results = load_run(run_dir)["results"]
    board = leaderboard_frame(results, top=top)
    if board.empty:
        return []
    cols = ["rank", "kind", *KEYS, *[c for c in BOARD_METRICS if c in board],
            *extra_columns(results)]
    return [{c: _json_safe(row.get(c)) for c in cols} for _, row in board.iterrows()]


def _md(value: Any, column: str = "") -> str:
    text = _fmt(value, column)
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(frame: pd.DataFrame, columns: list[str]) -> str:
    cols = [c for c in columns if c in frame.columns]
    lines = ["| " + " | ".join(_md(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_md(row[c], c) for c in cols) + " |")
    return "\n".join(lines)


def markdown_summary(run_dir: str | Path, *, top: int = 10) -> str:
    """Summary, top strategies, failures and simulator agreement as Markdown."""
    run = load_run(run_dir)
    results, cells, man = run["results"], run["cells"], run["manifest"]
    out = [f"# Tournament run {_md(man.get('run_id') or run['dir'].name)}", ""]
    conf = confidence_view(run)
    if conf is not None:
        out += [f"**{_md(conf['sentence'])}**", "", _md(conf["measure"]), ""]
        if not conf["in_set"].empty:
            out += [_md_table(conf["in_set"].head(30), list(conf["in_set"].columns)), ""]
            if len(conf["in_set"]) > 30:
                out += [f"_... {len(conf['in_set']) - 30} more in report.html_", ""]
        out += ["Beat equal weight (StepM): " + (_md(", ".join(conf["stepm"])) or "none"),
                "", "SPA p-value per rebalance mode: " + (", ".join(
                    f"{_md(k)} {_md(v, 'spa_pvalue')}" for k, v in conf["spa"].items())
                    or "none"), ""]
    race = race_view(man)
    if race is not None:
        out += [f"**{_md(race['sentence'])}**", "",
                _md_table(race["tiers"], list(race["tiers"].columns)), ""]
        out += [f"- {_md(m)}" for m in race["messages"]] + [""]
    for k, v in _summary_items(run):
        out.append(f"- **{_md(k)}**: {_md(v, k)}")
    r, c = status_counts(results), status_counts(cells)
    out.append("- **results**: " + ", ".join(f"{_md(v)} {_md(k)}" for k, v in r.items()))
    out.append("- **stage 1 cells**: " + ", ".join(f"{_md(v)} {_md(k)}" for k, v in c.items()))
    if man.get("cache"):
        out.append("- **cache hits**: " + ", ".join(
            f"{_md(s)} {_md(v.get('cached'))}/{_md(v.get('tasks'))}"
            for s, v in man["cache"].items() if isinstance(v, dict)))
    out += ["", f"## Top {top} strategies (Sharpe) and baselines", ""]
    board = leaderboard_frame(results, top=top)
    out.append(_md_table(board, ["rank", *KEYS, *[m for m in BOARD_METRICS if m in board],
                                 *extra_columns(results)]) if not board.empty else "_no ok results_")
    if _measures(results):
        out += ["", "Measure behind each column:", ""]
        out += [f"- **{_md(c)}**: {_md(m)}" for c, m in _measures(results)]
    out += ["", "## Failed and unsupported", ""]
    cell_rows, result_rows = failures_frames(results, cells)
    if cell_rows.empty and result_rows.empty:
        out.append("_none_")
    if not cell_rows.empty:
        out += ["Stage 1 cells:", "", _md_table(cell_rows.head(30), [*STRATEGY, "status", "reason", "windows"]), ""]
        if len(cell_rows) > 30:
            out.append(f"_... {len(cell_rows) - 30} more groups in report.html_")
    if not result_rows.empty:
        out += ["Stage 2 results:", "", _md_table(result_rows.head(30), [*STRATEGY, "status", "reason", "pairs"])]
        if len(result_rows) > 30:
            out.append(f"_... {len(result_rows) - 30} more groups in report.html_")
    fallbacks = fallback_frame(cells)
    out += ["", f"## Fallback windows ({len(fallbacks)})", ""]
    out.append(_md_table(fallbacks, list(fallbacks.columns)) if not fallbacks.empty else "_none_")
    out += ["", "## Simulator agreement", ""]
    agree = agreement_frame(results)
    if agree.empty:
        sims = sorted(results["simulator"].dropna().unique()) if not results.empty else []
        out.append(f"_only one simulator ran ({_md(', '.join(sims) or 'none')}): nothing to compare_")
    else:
        out.append(f"Worst 10 of {len(agree)} (relative difference vs {REFERENCE_SIMULATOR}):")
        out += ["", _md_table(agree.head(10), list(agree.columns))]
    out += ["", f"Full report: `{_md((run['dir'] / 'report.html').resolve())}`", ""]
    return "\n".join(out)
