"""Calibration of the pre-run estimate from earlier run directories (`--plan`).

Per (engine, profile): the ratio of measured cell seconds (the cells file) to the cost
model's; per (simulator, rebalance): the same for simulations (the results' `sim_seconds`);
per phase: the ratio of the manifest's timings to what the model predicts for that run.
Each ratio is clipped to `estimate.FACTOR_RANGE`, so one odd run cannot make an estimate
absurd. Reads Parquet and JSON only, never pickles.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .estimate import (FACTOR_RANGE, PHASES, Calibration, Workload, cell_seconds, horizon_days,
                       problem_size, raw_phases, sim_seconds)
from .schema import CELLS, MANIFEST, OK, RESULT_KEYS, RESULTS, STRATEGY_KEYS, RunDir

@dataclass
class PastRun:
    """What an earlier run directory says about costs (read-only, Parquet and JSON only)."""
    path: Path
    manifest: dict
    cells: Any                          # DataFrame: engine, profile, selection, solve_seconds
    results: Any                        # DataFrame: simulator, rebalance, status, sim_seconds


def find_run_dirs(roots: list[str | Path], max_depth: int = 3) -> list[Path]:
    """Two-stage run directories (manifest.json + cells.parquet) under `roots`."""
    seen, out = set(), []
    for root in roots:
        root = Path(root).expanduser()
        if not root.is_dir():
            continue
        stack = [(root, 0)]
        while stack:
            d, depth = stack.pop()
            try:
                rd = d.resolve()
            except OSError:
                continue
            if rd in seen:
                continue
            seen.add(rd)
            if (d / MANIFEST).is_file() and (d / CELLS).is_file():
                out.append(d)
                continue
            if depth < max_depth:
                try:
                    subdirs = sorted(p for p in d.iterdir() if p.is_dir()
                                     and not p.name.startswith("."))
                except OSError:
                    continue
                stack.extend((p, depth + 1) for p in subdirs)
    return sorted(out)


def read_past_run(path: Path) -> PastRun | None:
    try:
        run = RunDir(path)
        manifest = run.json(MANIFEST, required=True)
        if manifest.get("mode") != "two-stage" or "timings" not in manifest:
            return None
        cells = run.frame(CELLS, required=True,
                          columns=[*STRATEGY_KEYS, "status", "solve_seconds"])
        results = None
        if run.has(RESULTS):
            results = run.frame(RESULTS, columns=[*RESULT_KEYS, "status", "sim_seconds"])
        return PastRun(path, manifest, cells, results)
    except Exception:      # noqa: BLE001 - an unreadable directory is not history
        return None


def services_mode_of(manifest: dict) -> str:
    """How an earlier run got its services, from its start-up timings."""
    parallel = manifest.get("timings", {}).get("parallel", {})
    if "server_first_boot" in parallel:
        return "first_boot"
    if "server_boot" in parallel:
        return "temporary"
    return "up"


def _ratio(measured: float, model: float) -> float | None:
    if model <= 0 or measured <= 0:
        return None
    lo, hi = FACTOR_RANGE
    return min(max(measured / model, lo), hi)


def calibrate(model: dict, runs: list[PastRun],
              workload_of: Callable[[PastRun], Workload | None] | None = None) -> Calibration:
    """Ratios measured / model from earlier runs; see the module docstring.

    `workload_of(run)` rebuilds a past run's workload (the orchestration layer knows its
    chunking); without it, only the unit costs are calibrated."""
    cal = Calibration()
    if not runs:
        return cal
    import pandas as pd
    meas: dict[str, float] = {}
    pred: dict[str, float] = {}
    for run in runs:
        cfg = run.manifest.get("config", {})
        data = run.manifest.get("data", {})
        n_assets, top_k = int(data.get("assets", 0)), int(cfg.get("top_k", 10))
        train = int(cfg.get("windows", {}).get("train", model["stage1"]["ref_train"]))
        cells = run.cells[(run.cells["solve_seconds"] > 0) & (run.cells["engine"] != "baseline")]
        for (sel, eng, prof), g in cells.groupby(STRATEGY_KEYS):
            m = cell_seconds(model, eng, prof, problem_size(sel, n_assets, top_k), train)
            for key in (f"{eng}/{prof}", "*"):
                meas[key] = meas.get(key, 0.0) + float(g["solve_seconds"].sum())
                pred[key] = pred.get(key, 0.0) + m * len(g)
            cal.n_cells += len(g)
    cal.cells = {k: r for k in meas if (r := _ratio(meas[k], pred[k])) is not None}

    meas, pred = {}, {}
    for run in runs:
        if run.results is None:
            continue
        data = run.manifest.get("data", {})
        horizon = _horizon_of(run.manifest)
        ok = run.results[(run.results["status"] == OK) & run.results["sim_seconds"].notna()]
        ok = ok[ok["selection"] != "benchmark"]
        for (sim, reb), g in ok.groupby(["simulator", "rebalance"]):
            # A batched simulator's call overhead is shared by its chunk (one per selection).
            n_calls = g["selection"].nunique() if _batched(model, sim) else len(g)
            total = sim_seconds(model, sim, reb, len(g), horizon, int(data.get("assets", 1)))
            if _batched(model, sim) and n_calls > 1:
                call = (model["stage2"]["simulators"].get(sim) or {}).get("call", 0.0)
                total += call * (n_calls - 1)
            for key in (f"{sim}/{reb}", f"{sim}/*"):
                meas[key] = meas.get(key, 0.0) + float(g["sim_seconds"].sum())
                pred[key] = pred.get(key, 0.0) + total
            cal.n_sims += len(g)
    cal.sims = {k: r for k in meas if (r := _ratio(meas[k], pred[k])) is not None}

    if workload_of is not None:
        ratios: dict[str, list[float]] = {}
        for run in runs:
            try:
                w = workload_of(run)
            except Exception:      # noqa: BLE001 - a run we cannot rebuild only loses its phases
                w = None
            if w is None:
                continue
            got = phase_times(run.manifest)
            if "outputs" in got:      # the model's outputs include the process exit
                got["outputs"] += model["overheads"].get("exit", 0.0)
            want = raw_phases(model, w, cal)
            for name in PHASES:
                if name not in got:
                    continue
                # A stage that computed nothing says little about computing: skip it.
                if name == "stage1" and all(ch.cached for ch in w.stage1):
                    continue
                if name == "stage2" and all(ch.cached for ch in w.stage2):
                    continue
                key = f"startup@{w.services}" if name == "startup" else name
                r = _ratio(got[name], want[name])
                if r is not None:
                    ratios.setdefault(key, []).append(r)
        cal.phases = {k: float(pd.Series(v).median()) for k, v in ratios.items()}
    cal.runs = [str(r.path) for r in runs]
    return cal


def _batched(model: dict, simulator: str) -> bool:
    return bool((model["stage2"]["simulators"].get(simulator) or {}).get("batched"))


def _horizon_of(manifest: dict) -> int:
    cfg, data = manifest.get("config", {}), manifest.get("data", {})
    win = cfg.get("windows", {})
    return horizon_days(int(data.get("days", 0)), int(win.get("train", 180)),
                        int(win.get("test", 40)), int(win.get("step", 20)))


STARTUP_PHASES = ("python_start", "load_config_data", "plan", "services_start",
                  "prefect_import", "flow_setup")
OUTPUT_PHASES = ("results_frame", "statistics", "write_outputs", "report_charts",
                 "report_and_artifacts", "flow_overhead", "shutdown")


def phase_times(manifest: dict) -> dict[str, float]:
    """A run's manifest timings grouped into the estimate's four phases."""
    t = manifest.get("timings", {})
    if not isinstance(t, dict) or "stage1" not in t:
        return {}
    num = {k: v for k, v in t.items() if isinstance(v, (int, float))}
    out = {"startup": sum(num.get(k, 0.0) for k in STARTUP_PHASES),
           "stage1": num.get("stage1", 0.0), "stage2": num.get("stage2", 0.0),
           "outputs": sum(num.get(k, 0.0) for k in OUTPUT_PHASES)}
    if "total" not in num:           # a flow run without the CLI's phases
        out.pop("startup")
    return out
