"""Memory of repeated nautilus_trader backtests: in one process vs recycled Ray workers.

nautilus_trader 1.221 keeps ~MBs per BacktestEngine in the process even after `dispose()`.
This script runs the same K backtests (one strategy of the bundled S&P 500 cube, window mode
by default)
1. in this process, printing the RSS after each one, then
2. as Ray tasks with `@ray.remote(max_calls=M)`, so each worker process exits after M
   backtests and a fresh one takes over; it prints each worker's RSS after its backtest and
   the driver's RSS.

Usage (from the repository root):
    .venv/bin/python benchmarks/nautilus_memory.py [--k 20] [--max-calls 5] [--mode window]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

MB = 1024 * 1024


def rss_mb(pid: int | None = None) -> float:
    return psutil.Process(pid or os.getpid()).memory_info().rss / MB


def make_inputs(mode: str):
    from tournament.config import load_config
    from tournament.cube import OK
    from tournament.data import load_dataset
    from tournament.simulators.orders import build_orders
    from tournament.stage1 import run_stage1

    ds = load_dataset("sp500")
    cube = run_stage1(ds, load_config(engines=["custom"], selections=["all"],
                                      profiles=["min_variance", "equal_weight"]))
    st = cube.strategies()
    keys = [tuple(r) for r in st.loc[st["status"] == OK, ["selection", "engine", "profile"]]
            .itertuples(index=False)]
    orders = build_orders(cube, keys, dates=ds.dates, returns=ds.returns, rebalance=mode,
                          cost_rate=0.0006)
    from tournament.simulators.base import Market
    return Market(ds.returns, ds.dates, tuple(ds.assets)), orders, tuple(ds.assets)


def one_backtest(market, orders, assets, s: int = 0) -> tuple[float, float]:
    from tournament.simulators.nautilus_sim import NautilusSimulator
    t0 = time.perf_counter()
    sim = NautilusSimulator()
    path = sim.simulate_one(sim.prepare(market, orders), s)
    return float(np.prod(1 + path.net_returns)), time.perf_counter() - t0


def slope(values: list[float]) -> float:
    """MB per backtest: least-squares slope over the second half (after warm-up)."""
    v = np.asarray(values[len(values) // 2:])
    if v.size < 2:
        return float("nan")
    return float(np.polyfit(np.arange(v.size), v, 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=20, help="backtests per phase")
    ap.add_argument("--max-calls", type=int, default=5, help="Ray worker recycling")
    ap.add_argument("--mode", default="window", choices=["window", "daily", "tolerance"])
    args = ap.parse_args()

    market, orders, assets = make_inputs(args.mode)
    print(f"mode={args.mode} horizon={orders.horizon} assets={len(assets)} k={args.k}")

    # ---------------------------------------------------------------- in-process
    import nautilus_trader  # noqa: F401  (import cost not counted as growth)
    base = rss_mb()
    print(f"\n[in-process] RSS before: {base:.1f} MB")
    in_proc = []
    for k in range(args.k):
        final, secs = one_backtest(market, orders, assets)
        in_proc.append(rss_mb())
        print(f"  backtest {k + 1:3d}: final equity {final:.6f}  {secs:5.2f} s  "
              f"RSS {in_proc[-1]:7.1f} MB  (+{in_proc[-1] - base:6.1f})")
    print(f"[in-process] growth: {(in_proc[-1] - base) / args.k:.1f} MB/backtest overall, "
          f"{slope(in_proc):.1f} MB/backtest after warm-up")

    # ---------------------------------------------------------------- Ray, recycled workers
    import ray
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"],
                                       "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                                       "MKL_NUM_THREADS": "1"}})
    try:
        @ray.remote(num_cpus=1, max_calls=args.max_calls)
        def remote_backtest(market, orders, assets):
            final, secs = one_backtest(market, orders, assets)
            return os.getpid(), rss_mb(), final, secs

        refs_in = [ray.put(x) for x in (market, orders, assets)]
        driver0 = rss_mb()
        t0 = time.perf_counter()
        refs = [remote_backtest.remote(*refs_in) for _ in range(args.k)]
        per_pid: dict[int, list[float]] = {}
        print(f"\n[ray max_calls={args.max_calls}] driver RSS before: {driver0:.1f} MB")
        for k, ref in enumerate(refs):
            pid, rss, final, secs = ray.get(ref)
            per_pid.setdefault(pid, []).append(rss)
            print(f"  backtest {k + 1:3d}: worker {pid} call {len(per_pid[pid])}  "
                  f"final equity {final:.6f}  {secs:5.2f} s  worker RSS {rss:7.1f} MB  "
                  f"driver RSS {rss_mb():7.1f} MB")
        wall = time.perf_counter() - t0
        all_rss = [r for v in per_pid.values() for r in v]
        growth = [(v[-1] - v[0]) / (len(v) - 1) for v in per_pid.values() if len(v) > 1]
        print(f"[ray] {args.k} backtests in {wall:.1f} s on {len(per_pid)} worker processes; "
              f"worker RSS min/max {min(all_rss):.1f}/{max(all_rss):.1f} MB; "
              f"growth within a worker {np.mean(growth) if growth else float('nan'):.1f} "
              f"MB/backtest (bounded by max_calls={args.max_calls}); "
              f"driver RSS {driver0:.1f} -> {rss_mb():.1f} MB")
        print(f"[in-process] RSS went {base:.1f} -> {in_proc[-1]:.1f} MB over the same "
              f"{args.k} backtests")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
