"""Sizing: time and peak memory of the core Stage 1 + Stage 2 as days x assets x cells grow.

Runs the core functions in-process (no Prefect, no Ray) on `make_synthetic(days, assets)`:
Stage 1 (`run_stage1`, custom engine) then Stage 2 (`run_stage2`, custom simulator, low
fidelity). Each case runs in a fresh child process so its peak RSS is its own, with one BLAS
thread (as on a Ray worker), so "s per cell" is a single-core figure.

    .venv/bin/python benchmarks/sizing.py                 # default cases, ~5-8 min on 2 cores
    .venv/bin/python benchmarks/sizing.py --quick         # small cases only (~1 min)
    .venv/bin/python benchmarks/sizing.py --cases 2500x500 --nodes 4 --cores 16

Writes benchmarks/results/sizing.json and prints a table plus a projection to a cluster of
K nodes x C cores:  wall ~= cells x s_per_cell / (K x C) + fixed overheads.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "sizing.json"

GRID = {"selections": ["all", "momentum", "low_vol", "cluster"], "engines": ["custom"],
        "profiles": ["equal_weight", "min_variance", "max_sharpe", "risk_parity"],
        "train": 252, "test": 21, "step": 21, "fidelity": "low"}
DEFAULT_CASES = ["500x50", "1000x100", "2500x100", "2500x250", "2500x500"]
QUICK_CASES = ["500x50", "1000x100"]

# Fixed overheads of a cluster run (measured on this project, see the Prefect/Ray notes and
# tests/test_multinode.py): attach to Ray + ship packages, Prefect flow/subflow start-up,
# per-task overhead (~0.1 s per Ray task; cells are chunked into hundreds of tasks), outputs.
OVERHEAD_FIXED_S = 15.0
OVERHEAD_PER_TASK_S = 0.1
CELLS_PER_TASK = 100


def one_case(days: int, assets: int) -> dict:
    """Measure one case in this process (called in a fresh child)."""
    import resource

    from tournament.config import load_config
    from tournament.data import make_synthetic
    from tournament.stage1 import plan_cells, run_stage1
    from tournament.stage2 import ok_strategies, results_frame, run_stage2, simulation_pairs
    from tournament.windows import make_windows

    t0 = time.perf_counter()
    ds = make_synthetic(days, assets)
    cfg = load_config(**{k: v for k, v in GRID.items()})
    windows = make_windows(ds.n_days, cfg.windows)
    cells = plan_cells(cfg, windows)
    t_data = time.perf_counter() - t0

    t0 = time.perf_counter()
    cube = run_stage1(ds, cfg)
    t_stage1 = time.perf_counter() - t0

    t0 = time.perf_counter()
    sims = run_stage2(ds, cube, cfg)
    results, _ = results_frame(sims, cube, ds, cfg)
    t_stage2 = time.perf_counter() - t0

    # Stage 1 tasks are chunks of cells by (selection, engine) (flows.tournament_flow):
    # the largest chunk bounds the wall time however many cores there are.
    solve = cube.cells.groupby(["selection", "engine"])["solve_seconds"].sum()
    chunk_s = {f"{sel}/{eng}": round(float(v / solve.sum() * t_stage1), 3)
               for (sel, eng), v in solve.items()}
    n_ok = len(ok_strategies(cube))
    n_sims = n_ok * len(simulation_pairs(cfg))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB
    failed = int((results["status"] == "failed").sum())
    return {"days": days, "assets": assets, "windows": len(windows), "cells": len(cells),
            "strategies_ok": n_ok, "simulations": n_sims, "data_s": round(t_data, 3),
            "stage1_s": round(t_stage1, 3), "stage2_s": round(t_stage2, 3),
            "peak_rss_mb": round(peak_mb, 1),
            "s_per_cell": t_stage1 / len(cells),
            "s_per_simulation": t_stage2 / max(n_sims, 1),
            "failed_rows": failed, "stage1_chunk_s": chunk_s,
            "max_chunk_s": max(chunk_s.values())}


def run_case(case: str, timeout: float) -> dict:
    days, assets = (int(x) for x in case.lower().split("x"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba-cache"))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--one", case], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"days": days, "assets": assets, "error": f"timeout after {timeout:.0f}s"}
    if proc.returncode != 0:
        return {"days": days, "assets": assets, "error": proc.stderr[-2000:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    return row


def projection(rows: list[dict], nodes: list[int], cores: list[int]) -> list[dict]:
    """ideal wall ~= (stage1 + stage2 CPU s + per-task overhead) / (K*C) + fixed overhead;
    chunked wall = max(ideal, largest Stage 1 chunk + fixed): today's chunks are per
    (selection, engine), so one chunk runs on one core."""
    out = []
    for row in rows:
        if "error" in row:
            continue
        cpu = row["stage1_s"] + row["stage2_s"]
        tasks = max(1, row["cells"] // CELLS_PER_TASK)
        for k in nodes:
            for c in cores:
                workers = k * c
                wall = (cpu + tasks * OVERHEAD_PER_TASK_S) / workers + OVERHEAD_FIXED_S
                chunked = max(wall, row.get("max_chunk_s", 0) + OVERHEAD_FIXED_S)
                out.append({"days": row["days"], "assets": row["assets"], "cells": row["cells"],
                            "nodes": k, "cores": c, "workers": workers,
                            "serial_s": round(cpu, 1), "projected_wall_s": round(wall, 1),
                            "projected_wall_chunked_s": round(chunked, 1),
                            "memory_per_node_gb": round(c * row["peak_rss_mb"] / 1024, 1)})
    return out


def scaled(row: dict, factor_cells: float) -> dict:
    """The same data size with `factor_cells` times the cells, added as more (selection,
    engine) chunks of today's size (e.g. more engines): the largest chunk is unchanged."""
    return {**row, "cells": int(row["cells"] * factor_cells),
            "stage1_s": row["stage1_s"] * factor_cells, "stage2_s": row["stage2_s"] * factor_cells}


def print_table(rows: list[dict]) -> None:
    head = f"{'days':>5} {'assets':>6} {'cells':>6} {'stage1 s':>9} {'stage2 s':>9} " \
           f"{'peak RSS MB':>11} {'s/cell':>8} {'max chunk s':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['days']:>5} {r['assets']:>6}  error: {r['error'].splitlines()[-1][:80]}")
            continue
        print(f"{r['days']:>5} {r['assets']:>6} {r['cells']:>6} {r['stage1_s']:>9.1f} "
              f"{r['stage2_s']:>9.2f} {r['peak_rss_mb']:>11.0f} {r['s_per_cell']:>8.4f} "
              f"{r['max_chunk_s']:>11.1f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--cases", help="comma list of DAYSxASSETS (default: %s)" % ",".join(DEFAULT_CASES))
    p.add_argument("--quick", action="store_true", help="small cases only")
    p.add_argument("--timeout", type=float, default=420, help="per-case cap, seconds")
    p.add_argument("--nodes", default="1,4,8", help="cluster sizes K for the projection")
    p.add_argument("--cores", default="8,16", help="cores per node C for the projection")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    if args.one:
        sys.path.insert(0, str(REPO))
        days, assets = (int(x) for x in args.one.lower().split("x"))
        print(json.dumps(one_case(days, assets)))
        return 0

    cases = args.cases.split(",") if args.cases else (QUICK_CASES if args.quick else DEFAULT_CASES)
    rows = []
    for case in cases:
        print(f"case {case} ...", file=sys.stderr, flush=True)
        rows.append(run_case(case, args.timeout))
        print(f"  {json.dumps(rows[-1])[:300]}", file=sys.stderr, flush=True)
    print("\nStage 1 + Stage 2 (custom engine + custom simulator, low fidelity), one core:")
    print(f"grid {GRID}\n")
    print_table(rows)

    nodes = [int(x) for x in args.nodes.split(",")]
    cores = [int(x) for x in args.cores.split(",")]
    proj = projection(rows, nodes, cores)
    ok = [r for r in rows if "error" not in r]
    if ok:
        big = max(ok, key=lambda r: (r["days"] * r["assets"], r["cells"]))
        print(f"\nProjection for {big['days']} days x {big['assets']} assets "
              f"(wall ~= serial / (K*C) + {OVERHEAD_FIXED_S:.0f} s fixed + "
              f"{OVERHEAD_PER_TASK_S} s per task of ~{CELLS_PER_TASK} cells):")
        print("ideal = perfect balance over K*C workers; chunked = with today's Stage 1 "
              "chunks (one per selection x engine; the largest runs on one core); "
              "mem/node = C x peak RSS")
        print(f"{'cells':>7} {'K nodes':>7} {'C cores':>7} {'serial s':>9} {'ideal s':>8} "
              f"{'chunked s':>9} {'mem/node GB':>11}")
        for factor in (1, 10):
            for r in projection([scaled(big, factor)], nodes, cores):
                print(f"{r['cells']:>7} {r['nodes']:>7} {r['cores']:>7} {r['serial_s']:>9.0f} "
                      f"{r['projected_wall_s']:>8.1f} {r['projected_wall_chunked_s']:>9.1f} "
                      f"{r['memory_per_node_gb']:>11.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "grid": GRID, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                  "platform": platform.platform()},
        "threads": "one BLAS thread per process (as on a Ray worker)",
        "overheads": {"fixed_s": OVERHEAD_FIXED_S, "per_task_s": OVERHEAD_PER_TASK_S,
                      "cells_per_task": CELLS_PER_TASK},
        "rows": rows, "projection": proj}, indent=2))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
