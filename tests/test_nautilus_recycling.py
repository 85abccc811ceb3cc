"""nautilus isolation that really works (issue 16, item 4).

Stage 2's task runs nautilus backtests in a child process replaced every N backtests
(tasks/stage2.py). Checked on the task's own function, 20 real backtests with N=5:
* the child PID changes exactly every 5 backtests (4 processes), never the caller's PID;
* no child's peak RSS exceeds twice its RSS after its first backtest;
* the results equal the in-process simulator's.
And once through Ray (the task's function inside a Ray worker, as prefect-ray runs it).
The RSS figures are printed (pytest -s).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = [pytest.mark.timeout(600)]

N = 5


@pytest.fixture(scope="module")
def setup(sp500):
    from tournament.config import load_config
    from tournament.stage1 import run_stage1
    from tournament.stage2 import ok_strategies
    config = load_config(fidelity="high", engines=["custom"],
                         selections=["all", "momentum", "low_vol"],
                         profiles=["equal_weight", "min_variance", "max_sharpe", "risk_parity"])
    cube = run_stage1(sp500, config)
    keys = ok_strategies(cube)
    assert len(keys) >= 10, keys
    return sp500, config, cube, keys[:10]


def _chunk(setup, keys, rebalance):
    """What a Stage 2 nautilus task does with its missing simulations (tasks/stage2.py
    simulate_chunk: the per-process count from the environment, then simulate_recycled)."""
    from tasks.stage2 import backtests_per_process, simulate_recycled
    ds, config, cube, _ = setup
    result, workers = simulate_recycled(ds.returns, ds.dates, cube, keys, rebalance=rebalance,
                                        simulator="nautilus", config=config,
                                        per_process=backtests_per_process("nautilus"))
    return {"result": result, "workers": workers}


def test_backtest_processes_are_recycled_every_n_and_memory_stays_bounded(setup, monkeypatch):
    from tournament.stage2 import simulate_pair
    monkeypatch.setenv("TOURNAMENT_NAUTILUS_BACKTESTS_PER_PROCESS", str(N))
    ds, config, cube, keys = setup
    outs = [_chunk(setup, keys, "window"), _chunk(setup, keys, "tolerance")]   # 20 backtests
    workers = [w for out in outs for w in out["workers"]]
    assert len(workers) == 20
    pids = [w["pid"] for w in workers]
    assert os.getpid() not in pids
    groups = [pids[i:i + N] for i in range(0, 20, N)]
    assert all(len(set(g)) == 1 for g in groups), pids           # N backtests per process
    assert len({g[0] for g in groups}) == 20 // N, pids          # then a new process
    print(f"\nnautilus, {N} backtests per process, 20 backtests (window x10, tolerance x10):")
    for g in groups:
        mine = [w for w in workers if w["pid"] == g[0]]
        first, peak = mine[0]["rss_mb"], max(w["peak_mb"] for w in mine)
        print(f"  pid {g[0]}: RSS after 1st {first:.0f} MB, after each "
              f"{[round(w['rss_mb']) for w in mine]} MB, peak {peak:.0f} MB "
              f"({peak / first:.2f}x)")
        assert peak <= 2 * first, (g[0], first, peak)
    # Same numbers as the simulator run in this process.
    for out, rebalance in zip(outs, ("window", "tolerance")):
        assert out["result"].status == ["ok"] * len(keys), out["result"].reason
        assert list(out["result"].keys) == list(keys)
    ref = simulate_pair(ds.returns, ds.dates, cube, keys[:3], rebalance="window",
                        simulator="nautilus", config=config)
    np.testing.assert_array_equal(outs[0]["result"].net_returns[:3], ref.net_returns)
    np.testing.assert_array_equal(outs[0]["result"].turnover[:3], ref.turnover)


def test_recycling_inside_a_ray_worker(setup, ray_session):
    import ray

    from tasks.stage2 import backtests_per_process, simulate_recycled
    ds, config, cube, keys = setup

    @ray.remote(num_cpus=1)
    def stage2_task(returns, dates, cube, keys, config):
        os.environ["TOURNAMENT_NAUTILUS_BACKTESTS_PER_PROCESS"] = "2"
        result, workers = simulate_recycled(returns, dates, cube, keys, rebalance="window",
                                            simulator="nautilus", config=config,
                                            per_process=backtests_per_process("nautilus"))
        return os.getpid(), {"result": result, "workers": workers}

    ray_pid, out = ray.get(stage2_task.remote(ds.returns, ds.dates, cube, keys[:4], config))
    pids = [w["pid"] for w in out["workers"]]
    assert ray_pid not in pids and pids[0] == pids[1] != pids[2] == pids[3], (ray_pid, pids)
    assert out["result"].status == ["ok"] * 4, out["result"].reason
