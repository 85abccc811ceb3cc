"""How well `tournament run --plan` predicts a cold run (issue 17, item 3).

    .venv/bin/python benchmarks/plan_accuracy.py

For (a) the large grid (synthetic 1250x200, 3 selections x 3 engines x 5 profiles x 3
rebalances, 180/40/20, medium) and (b) a grid the cost model was not fitted on (synthetic
800x120, top_k 15, 120/30/15, medium): `--plan` with no earlier runs (the shipped cost model),
then the real cold run (fresh result storage, temporary services, as `make run`), and for (b)
also `--plan` with (a)'s run directory as history. Prints predicted vs actual wall time (and
per phase, and peak memory of the run's process tree) with their ratio; writes
benchmarks/results/plan_accuracy.json. Acceptance: |ratio - 1| <= 0.30 on (a), <= 0.50 on (b).
A private PREFECT_HOME is booted once first (its first boot is not what is measured).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from fit_cost_model import CLI, machine, run_cli  # noqa: E402
from isolation import isolated_env  # noqa: E402
from run_benchmarks import GRIDS, grid_args  # noqa: E402

LARGE = grid_args(GRIDS["large"], "medium")
UNSEEN = ["run", "--data", "synthetic:800x120", "--fidelity", "medium",
          "--selections", "all,momentum,low_vol", "--engines", "custom,skfolio,cvxportfolio",
          "--profiles", "equal_weight,min_variance,max_sharpe,risk_parity,hrp",
          "--rebalances", "window,daily,tolerance", "--train", "120", "--test", "30",
          "--step", "15", "--top-k", "15"]
GRID_SET = {"large": LARGE, "unseen": UNSEEN}
TOLERANCE = {"large": 0.30, "unseen": 0.50}
PHASE_LINES = {"start-up": "startup", "Stage 1": "stage1", "Stage 2": "stage2",
               "outputs": "outputs", "wall": "wall"}


def parse_plan(text: str) -> dict:
    out = {"text": text}
    for label, key in PHASE_LINES.items():
        m = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+) s\s+±(\d+)%", text, re.M)
        if m:
            out[key] = float(m.group(1))
            out[f"{key}_error"] = int(m.group(2)) / 100
    m = re.search(r"^\s+peak mem\s+([\d.]+) GB\s+±(\d+)%", text, re.M)
    if m:
        out["memory_gb"], out["memory_error"] = float(m.group(1)), int(m.group(2)) / 100
    m = re.search(r"^Stage 1\s+(\d+) cells .*cached: (\d+) cells", text, re.M)
    if m:
        out["cells"], out["cells_cached"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"^Stage 2\s+(\d+) simulations .*cached: (\d+)", text, re.M)
    if m:
        out["simulations"], out["simulations_cached"] = int(m.group(1)), int(m.group(2))
    out["basis"] = "history" if re.search(r"^estimate\s+from \d+ earlier", text, re.M) else "shipped"
    return out


def plan(args: list[str], env: dict, cwd: Path) -> dict:
    t0 = time.time()
    proc = subprocess.run(CLI + args + ["--plan"], env=env, cwd=cwd, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"--plan exited {proc.returncode}: {proc.stderr[-2000:]}")
    row = parse_plan(proc.stdout)
    row["plan_seconds"] = time.time() - t0
    return row


def cold(args: list[str], env: dict, cwd: Path) -> dict:
    row = run_cli(args, env, cwd)          # the fit's own runner: wall, sampled memory, manifest
    wall, memory, manifest = row["wall"], row["memory_mb"], row["manifest"]
    t = manifest["timings"]
    startup = sum(t.get(k, 0.0) for k in ("python_start", "load_config_data", "plan",
                                          "services_start", "prefect_import", "flow_setup"))
    phases = {"startup": startup, "stage1": t["stage1"], "stage2": t["stage2"]}
    phases["outputs"] = wall - sum(phases.values())
    return {"wall": wall, "phases": phases, "memory_mb": memory, "cache": manifest.get("cache")}


def load_state() -> dict:
    import psutil
    return {"loadavg": os.getloadavg(), "cpu_percent": psutil.cpu_percent(interval=1.0),
            "busy_processes": busy_processes()}


def busy_processes(threshold: float = 20.0) -> list[str]:
    """Processes (not ours) using CPU now: what else ran on the machine."""
    import psutil
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    out = []
    for p in procs:
        try:
            c = p.cpu_percent(None)
            if c >= threshold and p.pid != os.getpid():
                out.append(f"{p.info['name']} ({c:.0f}%): {' '.join(p.info['cmdline'] or [])[:80]}")
        except psutil.Error:
            pass
    return out


def main() -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                             "plan_accuracy.json"))
    out_path = Path(parser.parse_args().out)
    work = Path(tempfile.mkdtemp(prefix="tournament-plan-acc-"))
    env = isolated_env(work, attach=False)
    report: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                   time.gmtime()),
                    "state_before": load_state(), "grids": {}}
    try:
        print("== first boot of a private PREFECT_HOME (not measured)", file=sys.stderr, flush=True)
        cold(["run", "--data", "sp500", "--fidelity", "low", "--engines", "custom",
              "--profiles", "equal_weight", "--rebalances", "window",
              "--result-storage", str(work / "s-boot"), "--out", str(work / "boot" / "run")],
             env, work)
        empty = work / "no-history"
        empty.mkdir()
        for name, args in GRID_SET.items():
            d = work / name
            d.mkdir()
            common = ["--result-storage", str(d / "store"), "--out", str(d / "run")]
            print(f"== {name}: --plan (shipped model)", file=sys.stderr, flush=True)
            row = {"args": args, "plan_shipped": plan(args + common + ["--plan-history", str(empty)],
                                                       env, work)}
            if name == "unseen":
                print(f"== {name}: --plan (history: the large grid's run)", file=sys.stderr,
                      flush=True)
                row["plan_history"] = plan(args + common + ["--plan-history",
                                                            str(work / "large")], env, work)
            print(f"== {name}: cold run", file=sys.stderr, flush=True)
            row["state_during"] = {"loadavg_before": os.getloadavg()}
            row["actual"] = cold(args + common, env, work)
            row["state_during"]["loadavg_after"] = os.getloadavg()
            row["plan_after"] = plan(args + common + ["--plan-history", str(empty)], env, work)
            report["grids"][name] = row
            print_row(name, row)
        report["state_after"] = load_state()
        print_table(report)
        path = out_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=str))
        print(f"\nwrote {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_row(name: str, row: dict) -> None:
    a = row["actual"]
    p = row["plan_shipped"]
    print(f"   {name}: predicted {p['wall']:.1f} s (±{p['wall_error']:.0%}), actual "
          f"{a['wall']:.1f} s, ratio {p['wall'] / a['wall']:.2f}", file=sys.stderr, flush=True)


def print_table(report: dict) -> None:
    print(f"\n{'grid':8} {'estimate':9} {'predicted s':>11} {'actual s':>9} {'ratio':>6} "
          f"{'allowed':>8} {'ok':>3} | {'start':>11} {'stage 1':>11} {'stage 2':>11} "
          f"{'outputs':>11} | {'mem GB pred/act':>15}")
    for name, row in report["grids"].items():
        a = row["actual"]
        for key in ("plan_shipped", "plan_history"):
            if key not in row:
                continue
            p = row[key]
            ratio = p["wall"] / a["wall"]
            ok = abs(ratio - 1) <= TOLERANCE[name]
            ph = " ".join(f"{p[k]:5.1f}/{a['phases'][k]:5.1f}" for k in
                          ("startup", "stage1", "stage2", "outputs"))
            mem = f"{p.get('memory_gb', float('nan')):.1f}/{a['memory_mb']['total'] / 1024:.1f}"
            print(f"{name:8} {p['basis']:9} {p['wall']:11.1f} {a['wall']:9.1f} {ratio:6.2f} "
                  f"{'±' + format(TOLERANCE[name], '.0%'):>8} {'yes' if ok else 'NO':>3} | {ph} | "
                  f"{mem:>15}")
            row[f"ratio_{key}"] = ratio
            row[f"within_{key}"] = ok
        after = row["plan_after"]
        print(f"{'':8} after the run, --plan says cached: {after.get('cells_cached')}/"
              f"{after.get('cells')} cells, {after.get('simulations_cached')}/"
              f"{after.get('simulations')} simulations")


if __name__ == "__main__":
    sys.exit(main())
