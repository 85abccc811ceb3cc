"""Fault catalogue #3 and #4: failures inside cells and simulations are isolated.

One CLI run carries every injected fault (tournament.faults, TOURNAMENT_FAULTS) plus a real
infeasible problem:
  * engine:skfolio/min_variance/all:raise         injected solver failure (every window)
  * engine:skfolio/equal_weight/all/1:nan         NaN weights in ONE cell (window 1)
  * --max-weight 0.06 with top_k 10               momentum cells genuinely infeasible
                                                  (10 assets x 6% < 100%)
  * simulator:cvxportfolio/all/custom/min_variance:raise    simulator raises
  * simulator:cvxportfolio/all/baseline/equal_weight:short  simulator returns a day short
The run declares `--on-infeasible fail`, so unsolvable cells stay failed (under the default
`hold` they would be fallback windows; tests/test_research_correctness.py covers that).
Every other cell and simulation completes, each failure carries its reason, all outputs are
written, and the CLI exits 0 (the tournament completed; only --strict exits 3) with the failed
strategies in its last lines. (Results computed under injected
faults are keyed apart from normal ones: test_cache_keys::test_fault_rules_are_part_of_...)"""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from .conftest import Run

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]

FAULTS = ("engine:skfolio/min_variance/all:raise;engine:skfolio/equal_weight/all/1:nan;"
          "simulator:cvxportfolio/all/custom/min_variance:raise;"
          "simulator:cvxportfolio/all/baseline/equal_weight:short")
GRID = ["--data", "sp500", "--days", "300", "--train", "120", "--test", "40", "--step", "40",
        "--engines", "custom,skfolio", "--selections", "all,momentum",
        "--profiles", "equal_weight,min_variance", "--rebalances", "window",
        "--simulators", "custom,cvxportfolio", "--max-weight", "0.06", "--top-k", "10",
        "--num-cpus", "2", "--on-infeasible", "fail"]
OUTPUTS = ["weights_cube.pkl", "weights_cube.parquet", "cells.parquet", "results.parquet",
           "returns.parquet", "tournament_state.json", "manifest.json"]


@pytest.fixture(scope="module")
def faulty(prefect_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    run = Run(tmp, "faulty", api_url=prefect_server, grid=GRID,
              env={"TOURNAMENT_FAULTS": FAULTS})
    run.rc = run.wait(timeout=360)
    return run


def _cells(run):
    return pd.read_parquet(run.out / "cells.parquet")


def test_partial_failure_exit_code_and_every_output_written(faulty):
    assert faulty.rc == 0, faulty.output()[-3000:]
    tail = faulty.output().strip().splitlines()
    assert tail[-1] == str(faulty.out.resolve())
    assert any(line.startswith("failed strategies: ") and line != "failed strategies: 0"
               for line in tail)
    for name in OUTPUTS:
        assert (faulty.out / name).exists(), name
    state = json.loads(faulty.state_file.read_text())
    assert state["status"] == "completed_with_failures"
    assert state["stages"]["stage1"]["pending"] == 0 and state["stages"]["stage2"]["pending"] == 0


def test_injected_solver_failure_fails_its_cells_with_reason(faulty):
    cells = _cells(faulty)
    mine = cells[(cells.selection == "all") & (cells.engine == "skfolio")
                 & (cells.profile == "min_variance")]
    # 300 days, 120/40/40: rebalances at rows 119, 159, 199, 239, 279 (the last test is short)
    assert len(mine) == 5 and (mine.status == "failed").all()
    assert mine.reason.str.contains("EngineError: injected solver failure").all()


def test_nan_weights_in_one_cell_fail_only_that_cell(faulty):
    cells = _cells(faulty)
    mine = cells[(cells.selection == "all") & (cells.engine == "skfolio")
                 & (cells.profile == "equal_weight")].sort_values("window_start")
    assert list(mine.status) == ["ok", "failed", "ok", "ok", "ok"], mine[["status", "reason"]]
    assert "non-finite weights" in mine.reason.iloc[1]


def test_infeasible_caps_fail_with_solver_reason_and_others_complete(faulty):
    cells = _cells(faulty)
    mom = cells[(cells.selection == "momentum") & (cells.status != "unsupported")]
    assert len(mom) and (mom.status == "failed").all(), mom[["engine", "profile", "status"]]
    assert (mom.reason.str.len() > 10).all()
    # nothing else failed: every other cell is ok
    other = cells[(cells.selection == "all") & ~((cells.engine == "skfolio"))]
    assert (other.status == "ok").all(), other[other.status != "ok"][["engine", "profile", "reason"]]


def test_failed_strategies_are_failed_in_results_with_reason_not_simulated(faulty):
    res = pd.read_parquet(faulty.out / "results.parquet")
    strat = res.set_index(["selection", "engine", "profile", "simulator"])
    for key, text in [(("all", "skfolio", "min_variance"), "injected solver failure"),
                      (("all", "skfolio", "equal_weight"), "non-finite weights")]:
        rows = strat.loc[key]
        assert (rows.status == "failed").all() and rows.reason.str.contains(text).all(), rows
        assert rows.sharpe.isna().all()
    mom = res[res.selection == "momentum"]
    assert len(mom) and (mom.status == "failed").all() and (mom.reason.str.len() > 0).all()


def test_simulator_raising_fails_only_that_strategy_on_that_simulator(faulty):
    res = pd.read_parquet(faulty.out / "results.parquet").set_index(
        ["selection", "engine", "profile", "simulator"])
    bad = res.loc[("all", "custom", "min_variance", "cvxportfolio")]
    assert bad.status == "failed"
    assert "injected simulator failure" in bad.reason and "cvxportfolio" in bad.reason
    assert res.loc[("all", "custom", "min_variance", "custom")].status == "ok"
    good = res.loc[("all", "custom", "equal_weight", "cvxportfolio")]
    assert good.status == "ok" and pd.notna(good.sharpe)


def test_simulator_short_path_is_a_failure_naming_days(faulty):
    res = pd.read_parquet(faulty.out / "results.parquet").set_index(
        ["selection", "engine", "profile", "simulator"])
    short = res.loc[("all", "baseline", "equal_weight", "cvxportfolio")]
    assert short.status == "failed"
    m = re.search(r"returned (\d+) days of net_returns, expected (\d+)", short.reason)
    assert m and int(m[1]) == int(m[2]) - 1, short.reason
    assert res.loc[("all", "baseline", "equal_weight", "custom")].status == "ok"

