"""`--race` vs a full run at the same fidelity, both cold (empty result storage of their own).

    python benchmarks/race.py --grid standard --fidelity high [--work DIR] [--race-args ...]

Prints and writes `<work>/race-<grid>-<fidelity>.json`: the wall time of each CLI run (the
whole process), the manifest's Stage 2 time, whether every finalist (strategy promoted into
the last tier) has an ok row from every last-tier simulator, and the overlap of the top 5
(selection, engine, profile, rebalance) by the highest-fidelity simulator's Sharpe.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.run_benchmarks import GRIDS, grid_args, run_cli  # noqa: E402

UNIT = ["selection", "engine", "profile", "rebalance"]


def top(results: pd.DataFrame, simulator: str, n: int = 5) -> list[tuple]:
    ok = results[(results.status == "ok") & (results.simulator == simulator)
                 & (results.selection != "benchmark")]
    ok = ok.sort_values(["sharpe", *UNIT], ascending=[False, True, True, True, True])
    return [tuple(r) for r in ok[UNIT].head(n).itertuples(index=False)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--grid", default="standard", choices=sorted(GRIDS))
    p.add_argument("--fidelity", default="high")
    p.add_argument("--work", default="/tmp/race-bench")
    p.add_argument("--skip-full", action="store_true", help="reuse <work>/full")
    p.add_argument("race_args", nargs="*", help="extra flags for the race run")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOURNAMENT_NO_ATTACH": "1"}
    grid = GRIDS[a.grid]
    walls = {}
    for name, extra in (("full", []), ("race", ["--race", *a.race_args])):
        if name == "full" and a.skip_full and (work / "full" / "results.parquet").exists():
            walls[name] = json.loads((work / "bench.json").read_text())["full"]
            continue
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.rmtree(work / f"cache-{name}", ignore_errors=True)
        r = run_cli(grid_args(grid, a.fidelity) + extra + [
            "--result-storage", str(work / f"cache-{name}"), "--out", str(work / name)],
            cwd=work, env=env)
        man = json.loads((work / name / "manifest.json").read_text())
        walls[name] = {"wall": round(r["wall"], 1), "stage1": round(man["timings"]["stage1"], 1),
                       "stage2": round(man["timings"]["stage2"], 1)}
        (work / "bench.json").write_text(json.dumps(walls, indent=2))
    full = pd.read_parquet(work / "full" / "results.parquet")
    race = pd.read_parquet(work / "race" / "results.parquet")
    man = json.loads((work / "race" / "manifest.json").read_text())["race"]
    last = man["tiers"][-1]
    finalists = set()
    before = man["tiers"][-2]["tier"] if len(man["tiers"]) > 1 else None
    rows = race[(race.race_tier == before) & race.race_promoted.fillna(False).astype(bool)]
    finalists = {tuple(r) for r in rows[UNIT].itertuples(index=False)}
    covered = {}
    for sim in last["simulators"]:
        ok = race[(race.simulator == sim) & (race.status == "ok")]
        covered[sim] = finalists <= {tuple(r) for r in ok[UNIT].itertuples(index=False)}
    sim = last["simulators"][-1]
    t_full, t_race = top(full, sim), top(race, sim)
    out = {"grid": a.grid, "fidelity": a.fidelity, "race_args": a.race_args, **walls,
           "race_over_full_wall": round(walls["race"]["wall"] / walls["full"]["wall"], 3),
           "race_over_full_stage2": round(walls["race"]["stage2"] / walls["full"]["stage2"], 3),
           "n_strategies": man["n_strategies"], "cap": man["cap"],
           "tiers": [{k: t[k] for k in ("tier", "n_ran", "tau", "action", "set_size",
                                        "n_promoted", "seconds")} for t in man["tiers"]],
           "finalists": len(finalists), "finalists_covered": covered,
           f"top5_{sim}_full": ["/".join(u) for u in t_full],
           f"top5_{sim}_race": ["/".join(u) for u in t_race],
           "top5_overlap": len(set(t_full) & set(t_race)), "loadavg": os.getloadavg()}
    text = json.dumps(out, indent=2)
    print(text)
    (work / f"race-{a.grid}-{a.fidelity}.json").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
