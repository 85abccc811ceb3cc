"""Fixed-cost benchmark (`make bench`): every figure of the fixed-cost issue in ONE run.

    .venv/bin/python benchmarks/fixed_cost.py                 # default + large grid
    .venv/bin/python benchmarks/fixed_cost.py --grids default # quicker

Each figure comes from the real CLI run as a subprocess (what a user pays), in this order:
  1. first boot: a temporary-services run of the default grid on an EMPTY Prefect home;
  2. temporary services (no `tournament up`): default grid legacy, cold, warm;
  3. `tournament up`; services up: default grid cold and warm, large grid cold and warm;
     large grid legacy (one process, no services); `tournament down`.
"cold" = empty result storage; "warm" = the same command again; "start-up" = process start
to the first task submitted (manifest `timings.parallel.startup`); "floor" = (solver CPU +
simulator CPU of the cold run) / cores; "exit" = wall time after the manifest's last write
(interpreter shutdown). The check "timings account for the wall time" compares the sum of the
manifest's sequential phases with its `total` (process start -> last manifest write).
The JSON (benchmarks/results/fixed_cost.json) is what the README table is built from.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from isolation import isolated_env, services_up  # noqa: E402
from run_benchmarks import GRIDS, compute_floor, grid_args  # noqa: E402

CLI = [sys.executable, "-m", "flows.cli"]
DEFAULT = ["run", "--data", "sp500", "--fidelity", "medium"]     # `make run`'s grid
LARGE = grid_args(GRIDS["large"], "medium")


def run(args: list[str], env: dict, cwd: Path) -> dict:
    t0 = time.time()
    proc = subprocess.run(CLI + args, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    row = {"wall": wall, "first_line": (proc.stderr.splitlines() or [""])[0]}
    if "--out" in args:
        out = Path(args[args.index("--out") + 1])
        manifest_path = out / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        t = manifest["timings"]
        phases = {k: v for k, v in t.items() if isinstance(v, (int, float)) and k != "total"}
        row.update(timings=t, phases_sum=sum(phases.values()), manifest_total=t.get("total"),
                   startup=t.get("parallel", {}).get("startup"),
                   exit=t0 + wall - manifest_path.stat().st_mtime,
                   cache=manifest.get("cache"))
        if (out / "cells.parquet").exists() and "--mode" not in args:
            row.update(compute_floor(out))
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", default="default,large")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fixed_cost.json"))
    args = p.parse_args()
    grids = args.grids.split(",")
    work = Path(tempfile.mkdtemp(prefix="tournament-fixed-cost-"))
    temporary, attached = isolated_env(work, attach=False), isolated_env(work, attach=True)
    res: dict = {"cores": os.cpu_count(), "machine_state": (
        "fresh Prefect home for this benchmark; numba cache and Python bytecode as left by "
        "earlier runs on this machine")}

    def step(name, argv, env):
        print(f"== {name}", file=sys.stderr, flush=True)
        res[name] = run(argv, env, work)
        r = res[name]
        print(f"   wall {r['wall']:.1f} s" + (f", start-up {r['startup']:.1f} s"
                                              if r.get("startup") else ""), file=sys.stderr)
        return r

    try:
        storage = lambda name: ["--result-storage", str(work / f"store-{name}"),  # noqa: E731
                                "--out", str(work / f"run-{name}")]
        step("first_boot_default_cold", DEFAULT + storage("first"), temporary)
        step("temporary_default_legacy", DEFAULT + ["--mode", "legacy", "--out",
                                                    str(work / "run-legacy")], temporary)
        step("temporary_default_cold", DEFAULT + storage("temp"), temporary)
        step("temporary_default_warm", DEFAULT + storage("temp"), temporary)
        with services_up(attached, work, prefect_port=4287, ray_port=6387, timings=res):
            step("up_default_cold", DEFAULT + storage("up"), attached)
            step("up_default_warm", DEFAULT + storage("up"), attached)
            if "large" in grids:
                step("up_large_cold", LARGE + storage("large"), attached)
                step("up_large_warm", LARGE + storage("large"), attached)
        if "large" in grids:
            step("large_legacy", LARGE + ["--mode", "legacy", "--out",
                                          str(work / "run-large-legacy")], temporary)
        res["figures"] = figures(res)
        print_figures(res["figures"])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2, default=str))
        print(f"\nwrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def figures(r: dict) -> list[tuple[str, float | None, str]]:
    """(figure, value, target) rows: the issue's acceptance list, in its order."""
    def ratio(a, b):
        return r[a]["wall"] / r[b]["wall"] if a in r and b in r else None
    out = [
        ("services up: large grid warm / cold", ratio("up_large_warm", "up_large_cold"), "<= 0.10"),
        ("services up: default grid warm / cold", ratio("up_default_warm", "up_default_cold"), "<= 0.35"),
        ("services up: start-up, default cold (s)", r["up_default_cold"].get("startup"), "<= 6"),
        ("services up: start-up, default warm (s)", r["up_default_warm"].get("startup"), "<= 6"),
        ("services up: default two-stage / legacy", ratio("up_default_cold", "temporary_default_legacy"), "<= 0.5"),
        ("services up: large legacy / two-stage", (1 / ratio("up_large_cold", "large_legacy"))
         if "large_legacy" in r else None, ">= 10"),
        ("services up: large cold wall / floor", (r["up_large_cold"]["wall"] / r["up_large_cold"]["floor"])
         if "up_large_cold" in r else None, "~<= 1.1"),
        ("temporary: default two-stage / legacy", ratio("temporary_default_cold", "temporary_default_legacy"), "<= 0.7"),
        ("temporary: default warm / cold", ratio("temporary_default_warm", "temporary_default_cold"), "<= 0.6"),
        ("temporary: start-up, default cold (s)", r["temporary_default_cold"].get("startup"), "<= 12"),
        ("temporary: start-up, default warm (s)", r["temporary_default_warm"].get("startup"), "<= 12"),
        ("first boot (empty home): start-up (s)", r["first_boot_default_cold"].get("startup"), "reported"),
        ("first boot (empty home): server boot (s)",
         r["first_boot_default_cold"]["timings"]["parallel"].get("server_first_boot"), "reported"),
    ]
    worst = max(abs(v["phases_sum"] / v["manifest_total"] - 1) for v in r.values()
                if isinstance(v, dict) and v.get("manifest_total") and "phases_sum" in v
                and "--mode" not in str(v.get("first_line")))
    out.append(("manifest phases vs its total: worst relative gap", worst, "<= 0.10"))
    exits = [v["exit"] for v in r.values() if isinstance(v, dict) and "exit" in v]
    out.append(("exit after the manifest's last write, max (s)", max(exits), "reported"))
    out.append(("shutdown of temporary services, default cold (s)",
                r["temporary_default_cold"]["timings"].get("shutdown"), "reported"))
    out.append(("`tournament up` (s)", r.get("up_seconds"), "reported"))
    out.append(("`tournament down` (s)", r.get("down_seconds"), "reported"))
    return out


def print_figures(rows) -> None:
    print(f"\n{'figure':55} {'value':>9}  target")
    for name, value, target in rows:
        text = "n/a" if value is None else f"{value:9.2f}"
        print(f"{name:55} {text:>9}  {target}")


if __name__ == "__main__":
    sys.exit(main())
