"""Nightly increment benchmark (issue 15): what one more step of data costs.

    .venv/bin/python benchmarks/nightly.py                  # large grid, medium (~3 min)
    .venv/bin/python benchmarks/nightly.py --rounds 3       # three cold+night pairs, median
    .venv/bin/python benchmarks/nightly.py --assets 50 --days 600   # quicker

A synthetic prices file (scripts/grow_prices.py, `synthetic:ASSETS`, seed 7) of DAYS trading
days; the large grid (3 selections x 3 engines x 5 profiles x 3 rebalances, 180/40/20, top_k
20, medium) with anchored windows (`--start` = the file's first day). With services up
(`tournament up`, as a nightly deployment's worker has them):
  1. cold: empty result storage;
  2. the file grows by one window step (20 trading days), then the same command again:
     the "nightly" run. Stage 1 should solve only the new window's cells; Stage 2 reruns every
     strategy (every path grows);
prints wall times, their ratio (acceptance: nightly <= 0.35 x cold), the manifest's phases,
and the computed/cached counts of both runs; writes benchmarks/results/nightly.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from isolation import CLI, isolated_env, services_up  # noqa: E402
GRID = ["--fidelity", "medium", "--selections", "all,momentum,low_vol",
        "--engines", "custom,skfolio,cvxportfolio",
        "--profiles", "equal_weight,min_variance,max_sharpe,risk_parity,hrp",
        "--rebalances", "window,daily,tolerance", "--train", "180", "--test", "40",
        "--step", "20", "--top-k", "20"]

spec = importlib.util.spec_from_file_location("grow_prices", REPO / "scripts" / "grow_prices.py")
grow_prices = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grow_prices)


def run(args: list[str], env: dict, cwd: Path) -> dict:
    t0 = time.time()
    proc = subprocess.run(CLI + args, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.time() - t0
    if os.environ.get("NIGHTLY_BENCH_LOGS"):          # diagnostics: keep each run's stderr
        log = Path(os.environ["NIGHTLY_BENCH_LOGS"]) / (Path(args[args.index("--out") + 1]).name
                                                       + ".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stderr)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    out = Path(args[args.index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text())
    timings = manifest["timings"]
    phases = {k: round(v, 2) for k, v in timings.items() if isinstance(v, (int, float))}
    tasks = [line.split(" - ")[0].split("Task run '")[-1].rstrip("'") + " " +
             line.rsplit("in state ", 1)[-1] for line in proc.stderr.splitlines()
             if "Task run 'stage1" in line and "Finished in state" in line]
    return {"wall": wall, "phases": phases, "cache": manifest.get("cache"),
            "parallel": timings.get("parallel"), "stage1_tasks": tasks,
            "first_line": (proc.stderr.splitlines() or [""])[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", type=int, default=200)
    p.add_argument("--days", type=int, default=1250)
    p.add_argument("--append", type=int, default=20, help="trading days appended (one step)")
    p.add_argument("--rounds", type=int, default=1,
                   help="cold + night pairs, each on a fresh file and storage; the median "
                        "ratio is the result (this machine's walls vary by ~10%% run to run)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "nightly.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tournament-nightly-"))
    env = isolated_env(work, attach=True)
    source = f"synthetic:{args.assets}"
    res: dict = {"cores": os.cpu_count(), "file": f"{source} seed 7, {args.days} days",
                 "append": args.append, "grid": GRID, "rounds": [],
                 "machine_state": "fresh Prefect home; each round a fresh prices file and "
                                  "result storage; services up"}
    try:
        with services_up(env, work, prefect_port=4288, ray_port=6388):
            for r in range(args.rounds):
                # Each round: a fresh file and storage, the cold run, one step appended, the
                # night. Services (and Ray's head) stay up across rounds, as on a worker.
                prices = work / f"prices-{r}.parquet"
                grown = grow_prices.grow(prices, init=args.days, source=source)
                command = ["run", "--data", str(prices), *GRID, "--start",
                           str(grown.index[0].date()),
                           "--result-storage", str(work / f"store-{r}")]
                print(f"== round {r + 1}: cold", file=sys.stderr, flush=True)
                cold = run(command + ["--out", str(work / f"cold-{r}")], env, work)
                grow_prices.grow(prices, append=args.append, source=source)
                print(f"== round {r + 1}: nightly (+{args.append} days)", file=sys.stderr,
                      flush=True)
                night = run(command + ["--out", str(work / f"nightly-{r}")], env, work)
                res["rounds"].append({"cold": cold, "nightly": night,
                                      "ratio": night["wall"] / cold["wall"]})
        for r, one in enumerate(res["rounds"]):
            print(f"-- round {r + 1}")
            for name in ("cold", "nightly"):
                x = one[name]
                print(f"{name:8s} wall {x['wall']:7.1f} s  cache {json.dumps(x['cache'])}")
                print("         phases " + ", ".join(f"{k} {v}" for k, v in x["phases"].items()))
                print("         parallel " + json.dumps(x["parallel"]))
            print(f"nightly / cold = {one['ratio']:.3f}")
        ratios = sorted(one["ratio"] for one in res["rounds"])
        res["ratio"] = float(statistics.median(ratios))
        res["cold"], res["nightly"] = res["rounds"][-1]["cold"], res["rounds"][-1]["nightly"]
        print(f"nightly / cold: {', '.join(f'{x:.3f}' for x in ratios)} over "
              f"{len(ratios)} round(s); median {res['ratio']:.3f} (acceptance <= 0.35)")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
