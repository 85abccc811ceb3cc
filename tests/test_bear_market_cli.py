"""Acceptance (issue 14): a bear-market slice of the bundled prices, given as a CSV, through
the real CLI. The test runs low fidelity on a small grid to stay near two minutes on a shared
2-core machine; the same three runs at medium fidelity on the default grid were checked by hand
(issue 14 closing note: 12 fallback windows, 0 failed, exit 0 / 6 failed, exit 0 / exit 3).

2007-2009 holds the windows where max Sharpe is infeasible (no asset's training mean is above
the risk-free rate: Jan-Apr 2009). Default policy (hold): zero failed strategies, every
fallback window listed in the last lines, exit 0. `--on-infeasible fail`: exit 0 and the
failed strategies listed. `--strict` on top: exit 3.
"""
from __future__ import annotations

import pandas as pd
import pytest

from tests.reliability.conftest import Run

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(400)]

GRID = ["--fidelity", "low", "--engines", "custom", "--selections", "all,momentum,low_vol",
        "--profiles", "equal_weight,max_sharpe", "--rebalances", "window", "--num-cpus", "2"]
# Ray attaches to a cluster it finds on this machine unless told to start its own.
ENV = {"RAY_ADDRESS": "local"}


@pytest.fixture(scope="module")
def bear_csv(tmp_path_factory):
    from skfolio.datasets import load_sp500_dataset
    prices = load_sp500_dataset().loc["2007-01-01":"2009-12-31"]
    prices.index.name = "date"
    path = tmp_path_factory.mktemp("bear") / "sp500_2007_2009.csv"
    prices.to_csv(path)
    return path


@pytest.fixture(scope="module")
def runs(prefect_server, bear_csv):
    tmp = bear_csv.parent
    out = {}
    for name, extra in (("hold", []), ("fail", ["--on-infeasible", "fail"]),
                        ("strict", ["--on-infeasible", "fail", "--strict"])):
        run = Run(tmp, name, api_url=prefect_server, grid=["--data", str(bear_csv), *GRID],
                  args=extra, env=ENV)
        run.rc = run.wait(timeout=300)
        out[name] = run
    return out


def _tail(run) -> list[str]:
    return run.output().strip().splitlines()


def test_default_policy_no_failed_strategy_every_fallback_listed_exit_0(runs):
    run = runs["hold"]
    assert run.rc == 0, run.output()[-3000:]
    res = pd.read_parquet(run.out / "results.parquet")
    cells = pd.read_parquet(run.out / "cells.parquet")
    assert (res["status"] != "failed").all()
    fb = cells[cells["status"] == "fallback"]
    # max Sharpe: all 1 window, momentum 1, low_vol 4 (Jan-Apr 2009)
    assert len(fb) == 6 and (fb["profile"] == "max_sharpe").all()
    assert (fb["policy"] == "hold").all() and fb["reason"].str.contains("infeasible").all()
    per = res[res["profile"] == "max_sharpe"].groupby("selection")["fallback_windows"].max()
    assert per.to_dict() == {"all": 1, "low_vol": 4, "momentum": 1}
    tail = _tail(run)
    assert tail[-1] == str(run.out.resolve())
    assert tail[-2] == "failed strategies: 0"
    listed = [line for line in tail if line.startswith("  fallback ")]
    assert len(listed) == 6 and "fallback windows: 6 in 3 strategies" in tail
    for row in fb.itertuples():
        assert any(f"{pd.Timestamp(row.window_start).date()} {row.selection}/{row.engine}/"
                   f"{row.profile}: hold" in line for line in listed)
    # ... and the report and the markdown artifact show them
    assert "Fallback windows (6)" in (run.out / "report.html").read_text()
    from tournament.report import markdown_summary
    assert "## Fallback windows (6)" in markdown_summary(run.out)


def test_fail_policy_exits_0_and_lists_failed_strategies(runs):
    run = runs["fail"]
    assert run.rc == 0, run.output()[-3000:]
    res = pd.read_parquet(run.out / "results.parquet")
    failed = res.loc[res["status"] == "failed", ["selection", "engine", "profile"]]
    assert len(failed.drop_duplicates()) == 3
    tail = _tail(run)
    assert tail[-1] == str(run.out.resolve())
    assert "failed strategies: 3" in tail
    assert sum(line.startswith("  failed ") for line in tail) == 3


def test_strict_exits_3_when_a_strategy_failed(runs):
    assert runs["strict"].rc == 3, runs["strict"].output()[-3000:]
    assert _tail(runs["strict"])[-1] == str(runs["strict"].out.resolve())
