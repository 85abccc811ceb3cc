"""The leaderboard and the report's frames on small hand-made frames (pure pandas, < 1 s)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tournament.leaderboard import (extra_columns, leaderboard_columns, leaderboard_frame,
                                    leaderboard_text)
from tournament.report.format import fmt, json_safe, md, md_table
from tournament.report.frames import (agreement_frame, equity_baselines, failures_frames,
                                      fallback_frame, selections, simulator_board, simulators,
                                      status_counts)


def row(selection, engine, profile, sharpe, *, simulator="custom", rebalance="window",
        status="ok", reason="", final_equity=1.0, **extra):
    return {"selection": selection, "engine": engine, "profile": profile,
            "rebalance": rebalance, "simulator": simulator, "status": status, "reason": reason,
            "sharpe": sharpe, "final_equity": final_equity, **extra}


@pytest.fixture
def results() -> pd.DataFrame:
    return pd.DataFrame([
        row("all", "custom", "min_variance", 0.8),
        row("all", "custom", "max_sharpe", 1.5),
        row("momentum", "custom", "min_variance", 1.5),        # ties max_sharpe: kept after it
        row("momentum", "custom", "max_sharpe", 2.0, status="failed", reason="solver"),
        row("all", "baseline", "equal_weight", 0.9),
        row("benchmark", "baseline", "buy_and_hold", 0.7),
        row("all", "custom", "min_variance", 0.5, simulator="vectorbt"),
        row("all", "baseline", "equal_weight", 0.6, simulator="vectorbt"),
    ])


# ----------------------------------------------------------------------------- leaderboard
def test_leaderboard_ranks_ok_strategies_then_baselines(results):
    board = leaderboard_frame(results, top=2)
    assert board["kind"].tolist() == ["strategy", "strategy", "baseline", "baseline", "baseline"]
    assert board["rank"].tolist()[:2] == [1, 2] and board["rank"].isna().sum() == 3
    # failed rows never rank; equal Sharpes keep the results order (stable sort)
    assert board[["selection", "profile"]].iloc[:2].values.tolist() == [
        ["all", "max_sharpe"], ["momentum", "min_variance"]]
    assert board["sharpe"].tolist() == [1.5, 1.5, 0.9, 0.7, 0.6]


def test_leaderboard_of_one_simulator_and_without_baselines(results):
    board = leaderboard_frame(results, top=10, simulator="vectorbt")
    assert board["sharpe"].tolist() == [0.5, 0.6]
    assert board["kind"].tolist() == ["strategy", "baseline"]
    best = leaderboard_frame(results, top=10, with_baselines=False)
    assert best["sharpe"].tolist() == [1.5, 1.5, 0.8, 0.5]
    assert best["rank"].tolist() == [1, 2, 3, 4]


def test_leaderboard_of_nothing_is_empty():
    assert leaderboard_frame(pd.DataFrame(), top=5).empty
    failed = pd.DataFrame([row("all", "custom", "p", 1.0, status="failed")])
    assert leaderboard_frame(failed, top=5).empty
    assert leaderboard_text(failed) == "leaderboard: no ok results"


def test_leaderboard_columns_and_printed_text(results):
    results = results.assign(dsr=0.25, n_trials=3.0, cagr=0.1)
    assert extra_columns(results) == ["dsr", "n_trials"]     # known first, then the rest
    assert leaderboard_columns(results) == [
        "rank", "selection", "engine", "profile", "rebalance", "simulator", "sharpe", "cagr",
        "final_equity", "dsr", "n_trials"]
    lines = leaderboard_text(results, top=1).splitlines()
    assert lines[0].split() == ["rank", "selection", "engine", "profile", "rebalance",
                                "simulator", "sharpe", "cagr", "final_equity", "dsr"]
    assert lines[1].split() == ["1", "all", "custom", "max_sharpe", "window", "custom",
                                "1.500", "0.100", "1.000", "0.250"]
    assert len(lines) == 1 + 1 + 3                            # header, top 1, 3 baselines


def test_simulator_board_shows_the_benchmark_beside_every_simulator(results):
    custom = simulator_board(results, "custom", top=10)
    assert custom["selection"].tolist().count("benchmark") == 1
    vectorbt = simulator_board(results, "vectorbt", top=10)
    assert vectorbt[["selection", "simulator", "sharpe"]].values.tolist() == [
        ["all", "vectorbt", 0.5], ["all", "vectorbt", 0.6], ["benchmark", "custom", 0.7]]


def test_simulators_and_selections_order(results):
    frame = pd.concat([results, pd.DataFrame([row("all", "custom", "p", 1.0,
                                                  simulator="cvxportfolio")])])
    assert simulators(frame) == ["custom", "cvxportfolio", "vectorbt"]   # reference first
    assert selections(frame) == ["all", "momentum"]
    assert simulators(pd.DataFrame()) == [] and selections(pd.DataFrame()) == []


def test_equity_baselines_one_per_strategy(results):
    base = equity_baselines(results, "vectorbt")
    assert base[["selection", "simulator"]].values.tolist() == [
        ["all", "vectorbt"], ["benchmark", "custom"]]


# ----------------------------------------------------------------------------- other frames
def test_agreement_frame_relative_difference_against_custom():
    frame = pd.DataFrame([
        row("a", "custom", "p", 1.0, final_equity=2.0),
        row("a", "custom", "p", 1.1, simulator="vectorbt", final_equity=2.1),
        row("a", "custom", "p", 0.8, simulator="nautilus", final_equity=1.9),
        row("b", "custom", "p", 0.5, final_equity=1.5),
        row("b", "custom", "p", 0.5, simulator="vectorbt", final_equity=1.5),
    ])
    agree = agreement_frame(frame)
    assert agree.columns.tolist() == [
        "selection", "engine", "profile", "rebalance", "sharpe custom", "sharpe nautilus",
        "sharpe vectorbt", "final_equity custom", "final_equity nautilus",
        "final_equity vectorbt", "max rel diff sharpe", "max rel diff final_equity"]
    assert agree["selection"].tolist() == ["a", "b"]             # worst first
    assert agree["max rel diff final_equity"].tolist() == pytest.approx([0.05, 0.0])
    assert agree["max rel diff sharpe"].tolist() == pytest.approx([0.2, 0.0])
    assert math.isnan(agree.loc[1, "sharpe nautilus"])
    assert agreement_frame(frame[frame["simulator"] == "custom"]).empty


def test_failures_frames_group_cells_and_results():
    cells = pd.DataFrame({
        "selection": ["all"] * 4, "engine": ["custom"] * 4, "profile": ["hrp"] * 3 + ["mv"],
        "status": ["failed", "failed", "ok", "fallback"], "reason": ["infeasible"] * 4,
        "window_start": pd.to_datetime(["2021-03-01", "2021-01-01", "2021-02-01",
                                        "2021-04-01"])})
    results = pd.DataFrame([
        row("all", "custom", "hrp", np.nan, status="unsupported", reason="no hrp"),
        row("all", "custom", "hrp", np.nan, status="unsupported", reason="no hrp",
            rebalance="daily"),
        row("all", "custom", "mv", 1.0)])
    cell_rows, result_rows = failures_frames(results, cells)
    assert cell_rows[["profile", "status", "windows"]].values.tolist() == [["hrp", "failed", 2]]
    assert cell_rows["first_window"].tolist() == [pd.Timestamp("2021-01-01")]
    assert result_rows[["profile", "pairs"]].values.tolist() == [
        ["hrp", "daily/custom, window/custom"]]
    fb = fallback_frame(cells.assign(policy="equal_weight"))
    assert fb[["profile", "policy"]].values.tolist() == [["mv", "equal_weight"]]
    assert status_counts(cells) == {"ok": 1, "failed": 2, "unsupported": 0, "fallback": 1}
    assert status_counts(pd.DataFrame()) == {"ok": 0, "failed": 0, "unsupported": 0}


# ----------------------------------------------------------------------------- formatting
def test_cell_text():
    assert fmt(0.1234, "cagr") == "12.34%"
    assert fmt(1.23456) == "1.2346" and fmt(12.3456) == "12.35"
    assert fmt(12345.0) == "1.234e+04" and fmt(0.0001) == "1.000e-04"
    assert fmt(0.02, "max rel diff final_equity") == "2.000%"
    assert fmt(float("inf")) == "inf" and fmt(np.nan) == "" and fmt(None) == ""
    assert fmt(pd.Timestamp("2021-01-04")) == "2021-01-04"
    assert json_safe(np.float64(0.1234567)) == 0.123457 and json_safe(float("-inf")) is None
    assert json_safe(np.int64(3)) == 3 and json_safe(pd.NA) is None
    assert md("a|b\n<c>") == "a\\|b &lt;c&gt;"
    assert md_table(pd.DataFrame({"x": [0.5], "y": ["k"]}), ["x", "z", "y"]).splitlines() == [
        "| x | y |", "|---|---|", "| 0.5000 | k |"]


def test_the_charts_drawn_from_their_rows_alone_are_the_same_pngs():
    """flows.run_outputs sends the charts' worker only chart_returns(results, returns): the
    rows of each simulator's top strategies and baselines. The PNGs must not change."""
    import pandas as pd

    from tournament.config import load_config
    from tournament.data import load_dataset
    from tournament.pipeline import run_tournament
    from tournament.report.charts import chart_images, chart_returns
    ds = load_dataset("sp500", days=300)
    cfg = load_config(engines=["custom"], selections=["all", "momentum"],
                      profiles=["equal_weight", "min_variance"], rebalances=["window", "daily"],
                      train=120, test=20, step=20)
    run = run_tournament(ds, cfg)
    sub = chart_returns(run.results, run.returns)
    assert 0 < len(sub) < len(run.returns)
    assert chart_images(run.results, sub) == chart_images(run.results, run.returns)
    assert chart_returns(run.results, run.returns.iloc[:0]).empty
    pd.testing.assert_frame_equal(chart_returns(run.results, sub), sub)
