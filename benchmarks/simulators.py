"""Simulator benchmark (a script, not a timed test): cost of one Stage 2 call per simulator.

    .venv/bin/python benchmarks/simulators.py [--strategies 100] [--days 500] [--assets 50]

* custom: ALL strategies in one vectorised call (goal: 100 x 500 days x 50 assets < 50 ms);
* vectorbt: all strategies in one batched from_orders call, and per strategy;
* cvxportfolio, nautilus: per backtest (they simulate one strategy at a time);
for the `window` and `daily` rebalance modes. Nautilus memory across many backtests:
benchmarks/nautilus_memory.py (in-process growth vs recycled Ray workers).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from tournament.data import make_synthetic  # noqa: E402
from tournament.registry import get_simulator  # noqa: E402
from tournament.simulators.base import Market, run_simulator  # noqa: E402
from tournament.simulators.orders import orders_from_schedule  # noqa: E402


def random_schedule(rng, n_strategies: int, n_windows: int, n_assets: int) -> np.ndarray:
    w = rng.random((n_strategies, n_windows, n_assets)) ** 4     # concentrated, long-only
    return w / w.sum(axis=2, keepdims=True)


def timed(fn, repeat: int = 1) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", type=int, default=100)
    p.add_argument("--days", type=int, default=500)
    p.add_argument("--assets", type=int, default=50)
    p.add_argument("--per-strategy", type=int, default=3, help="backtests timed for slow sims")
    args = p.parse_args()
    ds = make_synthetic(args.days + 1, args.assets, seed=11)
    rng = np.random.default_rng(0)
    step = 20
    rows = np.arange(0, args.days - step, step)           # a rebalance every 20 days
    targets = random_schedule(rng, args.strategies, rows.size, args.assets)
    keys = [(f"s{i}", "bench", "random") for i in range(args.strategies)]
    print(f"{args.strategies} strategies x {args.days} days x {args.assets} assets, "
          f"{rows.size} rebalances\n")
    print(f"{'simulator':12} {'mode':7} {'call':>30} {'seconds':>9} {'per strategy ms':>16}")
    for mode in ("window", "daily"):
        orders = orders_from_schedule(targets, rows, args.days, keys=keys, returns=ds.returns,
                                      rebalance=mode, cost_rate=6e-4)
        custom = get_simulator("custom")
        run_simulator(custom, Market(ds.returns, ds.dates), orders)                 # warm
        t = timed(lambda: run_simulator(custom, Market(ds.returns, ds.dates), orders), repeat=5)
        print(f"{'custom':12} {mode:7} {'all strategies, one call':>30} {t:9.4f} "
              f"{1e3 * t / args.strategies:16.2f}")
        vbt = get_simulator("vectorbt")
        t0 = time.perf_counter()
        run_simulator(vbt, Market(ds.returns, ds.dates), orders)                    # first call: numba load/compile
        first = time.perf_counter() - t0
        t = timed(lambda: run_simulator(vbt, Market(ds.returns, ds.dates), orders), repeat=2)
        print(f"{'vectorbt':12} {mode:7} {'all strategies, one call':>30} {t:9.4f} "
              f"{1e3 * t / args.strategies:16.2f}   (first call {first:.1f}s)")
        few = orders_from_schedule(targets[:args.per_strategy], rows, args.days,
                                   keys=keys[:args.per_strategy], returns=ds.returns,
                                   rebalance=mode, cost_rate=6e-4)
        one = orders_from_schedule(targets[:1], rows, args.days, keys=keys[:1],
                                   returns=ds.returns, rebalance=mode, cost_rate=6e-4)
        t = timed(lambda: run_simulator(vbt, Market(ds.returns, ds.dates), one), repeat=3)
        print(f"{'vectorbt':12} {mode:7} {'one strategy per call':>30} {t:9.4f} {1e3 * t:16.2f}")
        for name in ("cvxportfolio", "nautilus"):
            sim = get_simulator(name)
            run_simulator(sim, Market(ds.returns, ds.dates), one)                   # warm imports
            t = timed(lambda: run_simulator(sim, Market(ds.returns, ds.dates), few))
            print(f"{name:12} {mode:7} {f'{args.per_strategy} backtests':>30} {t:9.4f} "
                  f"{1e3 * t / args.per_strategy:16.2f}")


if __name__ == "__main__":
    main()
