"""Benchmark harness: legacy loop vs two-stage, against the compute floor, in ONE run.

    .venv/bin/python benchmarks/run_benchmarks.py            # both grids, all tiers
    .venv/bin/python benchmarks/run_benchmarks.py --grids standard --tiers low,medium

For each grid and fidelity tier it runs the real CLI as a subprocess (so every number
includes what a user pays) and measures:
  legacy      `tournament run --mode legacy` wall time (single process, re-solves per simulator)
  cold        two-stage wall time with empty result storage
  startup     fixed cost before any work: imports + Prefect server + Ray start (+ worker warm-up)
  floor       sum of unique solver and simulator seconds (cells.parquet solve_seconds +
              results.parquet sim_seconds) / cores used
  warm        the same command again (nothing changed)
  incremental one selection mode replaced by another
  memory      peak RSS of the driver, peak summed RSS and PSS of Ray workers
and prints one table of ratios; the JSON goes to benchmarks/results/benchmark.json.
A separate memory check runs synthetic 2500 x 500 with 1 and 2 workers (PSS: shared object-store
pages counted once, which is what "held once" means).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "flows.cli"]
CORES = os.cpu_count() or 1

GRIDS = {
    # The legacy default grid on the bundled real data.
    "standard": {"data": "sp500", "days": 500,
                 "selections": "all,momentum,low_vol", "engines": "custom,skfolio,cvxportfolio",
                 "profiles": "equal_weight,min_variance,max_sharpe,risk_parity,hrp",
                 "rebalances": "window,daily,tolerance", "swap": ("low_vol", "cluster")},
    # Sized so the legacy loop takes >= 5 minutes at medium fidelity on 2 cores.
    "large": {"data": "synthetic:1250x200", "days": 1250,
              "selections": "all,momentum,low_vol", "engines": "custom,skfolio,cvxportfolio",
              "profiles": "equal_weight,min_variance,max_sharpe,risk_parity,hrp",
              "rebalances": "window,daily,tolerance", "swap": ("low_vol", "cluster"), "top_k": 20},
}


class Sampler:
    """Polls the process tree of a command: peak driver RSS, peak worker RSS/PSS sums."""

    def __init__(self, pid: int):
        self.pid = pid
        self.driver_rss = self.worker_rss = self.worker_pss = 0
        self.n_workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            rss = pss = n = 0
            for p in procs:
                try:
                    if p.pid == self.pid:
                        self.driver_rss = max(self.driver_rss, p.memory_info().rss)
                    elif p.name().startswith("ray::") or "default_worker.py" in " ".join(p.cmdline()):
                        info = p.memory_full_info()
                        rss += info.rss
                        pss += info.pss
                        n += 1
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.worker_rss, self.worker_pss = max(self.worker_rss, rss), max(self.worker_pss, pss)
            self.n_workers = max(self.n_workers, n)
            time.sleep(0.25)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        mb = 1 / 2 ** 20
        return {"driver_rss_mb": round(self.driver_rss * mb), "workers_rss_mb": round(self.worker_rss * mb),
                "workers_pss_mb": round(self.worker_pss * mb), "workers": self.n_workers}


def run_cli(args: list[str], *, cwd: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(CLI + args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid)
    output, _ = proc.communicate()
    wall = time.perf_counter() - t0
    memory = sampler.stop()
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{output[-4000:]}")
    ready = re.search(r"ready in ([\d.]+)s", output)
    return {"wall": wall, "startup": float(ready.group(1)) if ready else None, **memory,
            "exit": proc.returncode}


def grid_args(grid: dict, tier: str, *, selections: str | None = None) -> list[str]:
    args = ["run", "--data", grid["data"], "--days", str(grid["days"]), "--fidelity", tier,
            "--selections", selections or grid["selections"], "--engines", grid["engines"],
            "--profiles", grid["profiles"], "--rebalances", grid["rebalances"],
            "--train", "180", "--test", "40", "--step", "20"]
    if "top_k" in grid:
        args += ["--top-k", str(grid["top_k"])]
    return args


def compute_floor(run_dir: Path) -> dict:
    cells = pd.read_parquet(run_dir / "cells.parquet")
    results = pd.read_parquet(run_dir / "results.parquet")
    solve = float(cells["solve_seconds"].sum())
    sim = float(results["sim_seconds"].fillna(0).sum())
    return {"solve_cpu": solve, "sim_cpu": sim, "floor": (solve + sim) / CORES,
            "cells": len(cells), "simulations": int((results["status"] == "ok").sum())}


def bench(grid_name: str, tier: str, work: Path, env: dict, *, legacy: bool) -> dict:
    grid = GRIDS[grid_name]
    d = work / f"{grid_name}-{tier}"
    d.mkdir(parents=True, exist_ok=True)
    storage = d / "cache"
    common = ["--result-storage", str(storage)]
    row = {"grid": grid_name, "tier": tier}
    if legacy:
        r = run_cli(grid_args(grid, tier) + ["--mode", "legacy", "--out", str(d / "legacy")],
                    cwd=d, env=env)
        row["legacy"] = r["wall"]
        row["legacy_driver_rss_mb"] = r["driver_rss_mb"]
    cold = run_cli(grid_args(grid, tier) + common + ["--out", str(d / "cold")], cwd=d, env=env)
    manifest = json.loads((d / "cold" / "manifest.json").read_text())
    row.update(cold=cold["wall"], startup=cold["startup"],
               stage1=manifest["timings"]["stage1"], stage2=manifest["timings"]["stage2"],
               driver_rss_mb=cold["driver_rss_mb"], workers_rss_mb=cold["workers_rss_mb"],
               workers_pss_mb=cold["workers_pss_mb"])
    row.update(compute_floor(d / "cold"))
    warm = run_cli(grid_args(grid, tier) + common + ["--out", str(d / "warm")], cwd=d, env=env)
    row["warm"] = warm["wall"]
    old, new = grid["swap"]          # one selection mode replaced by another
    sels = [new if s == old else s for s in grid["selections"].split(",")]
    inc = run_cli(grid_args(grid, tier, selections=",".join(sels)) + common
                  + ["--out", str(d / "incremental")], cwd=d, env=env)
    row["incremental"] = inc["wall"]
    row["incremental_change"] = f"{old} -> {new}"
    return row


def memory_check(work: Path, env: dict) -> dict:
    """Synthetic 2500 x 500: worker memory with 1 vs 2 workers (object store, zero-copy)."""
    out = {}
    for cpus in (1, 2):
        d = work / f"mem-{cpus}"
        d.mkdir(parents=True, exist_ok=True)
        r = run_cli(["run", "--data", "synthetic:2500x500", "--days", "2500", "--fidelity", "low",
                     "--selections", "all,momentum", "--engines", "custom",
                     "--profiles", "equal_weight,min_variance", "--rebalances", "window",
                     "--train", "252", "--test", "63", "--step", "63", "--top-k", "50",
                     "--num-cpus", str(cpus), "--result-storage", str(d / "cache"),
                     "--out", str(d / "run")], cwd=d, env=env)
        out[cpus] = r
    return {"workers_1": out[1], "workers_2": out[2],
            "pss_ratio_2_vs_1": out[2]["workers_pss_mb"] / max(out[1]["workers_pss_mb"], 1),
            "rss_ratio_2_vs_1": out[2]["workers_rss_mb"] / max(out[1]["workers_rss_mb"], 1)}


def print_table(rows: list[dict]) -> None:
    print(f"\n{'grid':9} {'tier':7} {'legacy':>8} {'cold':>7} {'start':>6} {'floor':>7} "
          f"{'warm':>6} {'incr':>6} | {'leg/2st':>7} {'wall/fl':>7} {'stg/fl':>7} "
          f"{'warm/c':>6} {'inc/c':>6} | {'drvMB':>6} {'wrkPSS':>6}")
    for r in rows:
        legacy = r.get("legacy")
        stages = r["stage1"] + r["stage2"]
        print(f"{r['grid']:9} {r['tier']:7} {legacy or float('nan'):8.1f} {r['cold']:7.1f} "
              f"{r['startup'] or float('nan'):6.1f} {r['floor']:7.1f} {r['warm']:6.1f} "
              f"{r['incremental']:6.1f} | {(legacy or float('nan')) / r['cold']:7.2f} "
              f"{r['cold'] / r['floor']:7.2f} {stages / r['floor']:7.2f} "
              f"{r['warm'] / r['cold']:6.2f} {r['incremental'] / r['cold']:6.2f} | "
              f"{r['driver_rss_mb']:6d} {r['workers_pss_mb']:6d}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", default="standard,large")
    p.add_argument("--tiers", default="low,medium,high")
    p.add_argument("--no-legacy", default="large:high",
                   help="grid:tier pairs whose legacy run is skipped (projected instead)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "benchmark.json"))
    args = p.parse_args()
    skip = set(filter(None, args.no_legacy.split(",")))
    work = Path(tempfile.mkdtemp(prefix="tournament-bench-"))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "NUMBA_CACHE_DIR": str(REPO / ".numba-cache")}
    env.pop("PREFECT_API_URL", None)      # each run pays for its own server, as users do
    rows = []
    try:
        for grid in args.grids.split(","):
            for tier in args.tiers.split(","):
                print(f"== {grid} / {tier}", file=sys.stderr, flush=True)
                rows.append(bench(grid, tier, work, env, legacy=f"{grid}:{tier}" not in skip))
                print_table(rows[-1:])
        report = {"cores": CORES, "rows": rows}
        if args.memory:
            report["memory"] = memory_check(work, env)
        print_table(rows)
        if "memory" in report:
            m = report["memory"]
            print(f"\nmemory 2500x500: workers PSS 1 worker {m['workers_1']['workers_pss_mb']} MB, "
                  f"2 workers {m['workers_2']['workers_pss_mb']} MB (ratio {m['pss_ratio_2_vs_1']:.2f}); "
                  f"RSS ratio {m['rss_ratio_2_vs_1']:.2f}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
