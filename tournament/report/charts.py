"""The report's charts as base64 PNGs, drawn with matplotlib's Agg backend (no display).

Drawing them is most of a report's cost and they depend only on the results and returns
frames, so the flow caches `chart_images` by those frames' digest (tournament.keys lists
this module and what it reads among the charts' code).
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

from ..leaderboard import BASELINE_ENGINE, KEYS, leaderboard_frame
from ..schema import OK
from .format import is_missing
from .frames import equity_baselines, selections


EQUITY_TOP = 5       # strategies per equity chart (each simulator's best by Sharpe)


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


def _label(row) -> str:
    return "/".join(str(row[k]) for k in KEYS if k in row)


def equity_chart(returns: pd.DataFrame, results: pd.DataFrame, simulator: str, *,
                 top: int = EQUITY_TOP) -> str | None:
    """Top strategies (by Sharpe, this simulator) and the baselines as growth of 1."""
    if returns.empty or results.empty:
        return None
    board = leaderboard_frame(results, top=top, simulator=simulator, with_baselines=False)
    lines = [(r, False) for _, r in board.iterrows()]
    lines += [(r, True) for _, r in equity_baselines(results, simulator).iterrows()]
    if not lines:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    ret = _rows_of(returns, [tuple(row[k] for k in KEYS) for row, _ in lines])
    ret["date"] = pd.to_datetime(ret["date"])
    index = ret.set_index(KEYS).sort_index()
    for row, is_base in lines:
        key = tuple(row[k] for k in KEYS)
        try:
            part = index.loc[key]
        except KeyError:      # a results row without returns (e.g. written by hand)
            continue
        part = part.sort_values("date")
        equity = (1.0 + part["net_return"].astype(float)).cumprod()
        label = _label(row) + (f"  (Sharpe {row['sharpe']:.2f})" if not is_missing(row.get("sharpe")) else "")
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


def _rows_of(returns: pd.DataFrame, keys: list[tuple]) -> pd.DataFrame:
    """The rows of `returns` whose KEYS are in `keys` (a copy; indexing all ~10^5-10^6 daily
    rows to plot a few paths was most of a chart's time)."""
    if not keys:
        return returns.iloc[:0].copy()
    wanted = pd.MultiIndex.from_tuples(keys, names=KEYS)
    have = pd.MultiIndex.from_frame(returns[KEYS])
    return returns[have.isin(wanted)].copy()


def chart_returns(results: pd.DataFrame, returns: pd.DataFrame) -> pd.DataFrame:
    """The rows of `returns` that `chart_images(results, returns)` draws (each simulator's
    top strategies and baselines), so a worker drawing the charts is sent only those:
    chart_images(results, chart_returns(results, returns)) == chart_images(results, returns)."""
    if returns.empty or results.empty:
        return returns
    keys = []
    for sim in sorted(results["simulator"].dropna().unique()):
        board = leaderboard_frame(results, top=EQUITY_TOP, simulator=sim,
                                  with_baselines=False)
        rows = [r for _, r in board.iterrows()]
        rows += [r for _, r in equity_baselines(results, sim).iterrows()]
        keys += [tuple(r[k] for k in KEYS) for r in rows]
    return _rows_of(returns, keys)


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
    ok = sub.assign(sharpe=sub["sharpe"].where(sub["status"] == OK))
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


def chart_images(results: pd.DataFrame, returns: pd.DataFrame) -> dict[str, str]:
    """Every chart of the report as base64 PNG, by name (`equity/SIM`, `heatmap/SEL/SIM`)."""
    if results.empty:
        return {}
    out = {}
    for sim in sorted(results["simulator"].dropna().unique()):
        if png := equity_chart(returns, results, sim):
            out[f"equity/{sim}"] = png
        for sel in selections(results):
            if png := heatmap_chart(results, sel, sim):
                out[f"heatmap/{sel}/{sim}"] = png
    return out
