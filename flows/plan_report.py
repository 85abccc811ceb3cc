"""`tournament run --plan`: what a run would compute, what is already stored, and what it
would cost (tournament.estimate), computing nothing: no Ray, no Prefect server, no solve.
About 400 lines on purpose: the plan, the workload it prices and the text it prints change
together.

It reads result storage (which keys exist; stored Stage 1 results, to know Stage 2's keys,
through flows.plan) and earlier run directories (their measured costs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tournament.schema import OK, STRATEGY_KEYS

from .plan import (DEFAULT_RESULT_STORAGE, STAGE2_COST, load_stored, stage1_chunks,
                   stage1_plan, stage2_chunks, stage2_plan, stored_units)

DEFAULT_PLAN_HISTORY = "runs"
RESULT_STORAGE_BLOCK_ENV = "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"


def _supported(engine: str, profile: str) -> bool:
    from tournament.stage1 import engine_instance
    return engine_instance(engine).supports(profile)


def _stage2_order(chunks: list) -> list:
    """Stage 2's submission order (stage2_plan: most expensive first)."""
    return sorted(chunks, key=lambda c: -STAGE2_COST.get(c[1], 1.0) * c[2]
                  * (3 if c[0] == "daily" else 1))


@dataclass
class RunPlan:
    """What `tournament run --plan` reports."""
    config: object
    dataset_info: dict
    n_windows: int
    horizon: int
    storage: str
    storage_checked: bool
    refresh: bool
    stage1_tasks: int
    stage1_tasks_cached: int
    n_cells: int
    n_cells_supported: int
    n_cells_cached: int
    stage2_tasks: int
    stage2_tasks_cached: int
    n_simulations: int
    n_simulations_cached: int
    stage2_keys_known: bool           # False: Stage 1 not (all) stored, Stage 2 keys unknown
    workload: object = None


def plan_run(config, dataset, *, result_storage: str | None, refresh: bool, cpus: int,
             services: str, data_load_seconds: float | None = None) -> RunPlan:
    """Chunks, keys and stored counts of the run `config` x `dataset` would do, and its
    workload for tournament.estimate. Reads storage; computes nothing."""
    from tournament.cube import WeightsCube
    from tournament.estimate import Stage1Chunk, Stage2Chunk, Workload, horizon_days, problem_size
    from tournament.stage1 import apply_infeasible_policy
    from tournament.stage2 import ok_strategies, simulation_pairs
    from tournament.windows import first_row, windows_for

    windows = windows_for(dataset, config.windows)
    w = config.windows
    horizon = horizon_days(dataset.n_days - first_row(dataset.dates, w.start), w.train, w.test,
                           w.step)
    location = result_storage or os.environ.get(RESULT_STORAGE_BLOCK_ENV) or DEFAULT_RESULT_STORAGE
    chunks1, _ = stage1_plan(config, dataset, windows)
    found1 = (set(), set()) if refresh else stored_units(chunks1, location)
    checked = found1 is not None
    whole1, units1 = found1 or (set(), set())

    def size(cell):
        return problem_size(cell.selection, dataset.n_assets, config.top_k)

    def missing(chunk, units):
        return [m for m, k in zip(chunk.members, chunk.unit_keys)
                if k is not None and k not in units]

    # A chunk computes only its missing cells (tasks.stage1: the others are read).
    s1 = [Stage1Chunk([(c.engine, c.profile, size(c)) for c in missing(ch, units1)],
                      cached=not missing(ch, units1)) for ch in chunks1]
    n_cells = sum(len(ch.members) for ch in chunks1)
    n_supported = sum(len(ch.stored_units()) for ch in chunks1)
    n_cells_cached = n_supported - sum(len(missing(ch, units1)) for ch in chunks1)

    # Strategies of each selection; a selection whose cells are all stored has known
    # Stage 2 keys (they follow from its weights).
    strategies: dict[str, list] = {}
    stored_cells: dict[str, list] = {}
    pending: set[str] = set()
    for ch in chunks1:
        for c, k in zip(ch.members, ch.unit_keys):
            if k is None:
                continue
            if c.strategy not in strategies.setdefault(c.selection, []):
                strategies[c.selection].append(c.strategy)
            if k in units1:
                stored_cells.setdefault(c.selection, []).append((c, k))
            else:
                pending.add(c.selection)
    known_sel = set() if refresh else set(strategies) - pending
    pairs = simulation_pairs(config)
    known_chunks: list = []
    ok_known: list = []
    results = []
    for sel in sorted(known_sel):
        for cell, key in stored_cells.get(sel, []):
            stored_cell = load_stored(key, location)
            if stored_cell is None:
                known_sel = set()
                break
            results.append(stored_cell.placed(cell, dataset.assets))
    if known_sel and results:
        starts = [dataset.dates[wd.rebalance] for wd in windows]
        ends = [dataset.dates[wd.test_end] for wd in windows]
        cube = WeightsCube.from_results(apply_infeasible_policy(results, config.on_infeasible),
                                        assets=dataset.assets, window_starts=starts,
                                        window_ends=ends)
        ok_known = ok_strategies(cube)
        known_chunks = stage2_plan(config, dataset, cube, ok_known, pairs)
    else:
        known_sel = set()
    found2 = (set(), set()) if refresh or not known_chunks else stored_units(known_chunks,
                                                                               location)
    _, units2 = found2 or (set(), set())
    rows2, n_sims_cached = [], 0
    for c in known_chunks:
        n_missing = sum(k not in units2 for k in c.unit_keys)
        n_sims_cached += len(c.members) - n_missing
        rows2.append((c.rebalance, c.simulator, n_missing or len(c.members), not n_missing))
    unknown = [k for sel, ks in sorted(strategies.items()) if sel not in known_sel for k in ks]
    for rebalance, simulator in pairs:
        for _, members in stage2_chunks(unknown, simulator):
            rows2.append((rebalance, simulator, len(members), False))
    rows2 = _stage2_order(rows2)
    s2 = [Stage2Chunk(sim, reb, n, cached=cached) for reb, sim, n, cached in rows2]
    n_strategies = len(ok_known) + len(unknown)
    workload = Workload(n_days=dataset.n_days, n_assets=dataset.n_assets, train=w.train,
                        horizon=horizon, cpus=cpus, services=services, stage1=s1, stage2=s2,
                        n_strategies=n_strategies, n_result_rows=n_strategies * len(pairs),
                        data_load_seconds=data_load_seconds,
                        simulators=tuple(config.simulators), engines=tuple(config.engines),
                        n_cells=n_cells)
    return RunPlan(config=config, dataset_info=dataset.describe(), n_windows=len(windows),
                   horizon=horizon, storage=str(location), storage_checked=checked,
                   refresh=refresh, stage1_tasks=len(chunks1),
                   stage1_tasks_cached=sum(ch.cached for ch in s1), n_cells=n_cells,
                   n_cells_supported=n_supported, n_cells_cached=n_cells_cached,
                   stage2_tasks=len(s2), stage2_tasks_cached=sum(ch.cached for ch in s2),
                   n_simulations=n_strategies * len(pairs),
                   n_simulations_cached=n_sims_cached,
                   stage2_keys_known=bool(known_chunks) and not unknown, workload=workload)


def _tasks_cached(stage: dict) -> int:
    """A manifest's cached task count. Manifests written before the counts were per cell
    (no `computed`) kept it in `cached`."""
    return int(stage.get("tasks_cached", 0) if "computed" in stage else stage.get("cached", 0))


def past_workload(run, *, cpus: int):
    """An earlier run's workload, rebuilt from its manifest and results (for calibration):
    its chunks, with the manifest's cached task counts applied in order."""
    from tournament.calibration import services_mode_of
    from tournament.config import config_from_dict
    from tournament.estimate import Stage1Chunk, Stage2Chunk, Workload, horizon_days, problem_size
    from tournament.stage1 import plan_cells
    from tournament.windows import make_windows
    m = run.manifest
    config = config_from_dict(m["config"], source=f"{run.path}/manifest.json")
    n_days, n_assets = int(m["data"]["days"]), int(m["data"]["assets"])
    windows = make_windows(n_days, config.windows)
    cache = m.get("cache", {})
    s1_cached = _tasks_cached(cache.get("stage1", {}))
    s1 = []
    for i, (_, cells) in enumerate(stage1_chunks(plan_cells(config, windows), n_assets=n_assets)):
        s1.append(Stage1Chunk([(c.engine, c.profile,
                                problem_size(c.selection, n_assets, config.top_k))
                               for c in cells if _supported(c.engine, c.profile)],
                              cached=i < s1_cached))
    res = run.results
    ok = res[(res["status"] == OK) & (res["selection"] != "benchmark")] if res is not None else None
    keys = sorted({tuple(k) for k in ok[STRATEGY_KEYS].itertuples(
        index=False)}) if ok is not None else []
    rows = [(reb, sim, len(members), False) for reb in config.rebalances
            for sim in config.simulators for _, members in stage2_chunks(keys, sim)]
    rows = _stage2_order(rows)
    s2_cached = _tasks_cached(cache.get("stage2", {}))
    s2 = [Stage2Chunk(sim, reb, n, cached=i < s2_cached) for i, (reb, sim, n, _) in enumerate(rows)]
    w = config.windows
    return Workload(n_days=n_days, n_assets=n_assets, train=w.train,
                    horizon=horizon_days(n_days, w.train, w.test, w.step), cpus=cpus,
                    services=services_mode_of(m), stage1=s1, stage2=s2, n_strategies=len(keys),
                    n_result_rows=len(keys) * len(config.rebalances) * len(config.simulators),
                    data_load_seconds=m["timings"].get("load_config_data"),
                    simulators=tuple(config.simulators), engines=tuple(config.engines),
                    n_cells=len(plan_cells(config, windows)))


def history_roots(plan_history: str | None, out: str | None) -> list[Path]:
    """Where --plan looks for earlier runs: --plan-history (default `runs`) and --out's parent."""
    roots = [Path(plan_history or DEFAULT_PLAN_HISTORY)]
    if out:
        roots.append(Path(out).parent)
    seen, uniq = set(), []
    for r in roots:
        key = r.expanduser().resolve()
        if key not in seen:
            seen.add(key)
            uniq.append(r)
    return uniq


def detect_services(*, explicit_api_url: str | None, explicit_ray: str | None,
                    num_cpus: int | None) -> tuple[str, str, int]:
    """(mode, one line, Ray CPUs) for the services a run would use, found as the run finds
    them (flows.services.find_running_services); nothing is started."""
    from . import services
    attached = services.find_running_services(explicit_api_url=explicit_api_url,
                                              explicit_ray=explicit_ray)
    cores = os.cpu_count() or 1
    if attached is None or attached.source == "temporary":
        note = f" ({attached.note.removeprefix('tournament: ')})" if attached is not None and \
            attached.note else ""
        if services.database_is_new():
            return ("first_boot", "temporary Prefect server (first boot on this PREFECT_HOME: "
                    f"creates its database) and local Ray for this run{note}",
                    num_cpus or cores)
        return ("temporary", "temporary Prefect server and local Ray for this run (no "
                f"`tournament up` services found){note}", num_cpus or cores)
    if attached.source == "up":
        state = services.read_state()
        cpus = (state.num_cpus if state and state.num_cpus else cores)
        return ("up", f"services of `tournament up`: Prefect UI {attached.ui_url}, Ray "
                f"{attached.ray_address}", cpus)
    if attached.ray_address:
        return ("explicit", f"Prefect API {attached.api_url} and Ray at {attached.ray_address} "
                f"(its CPUs are not asked: {cores} assumed)", cores)
    return ("explicit", f"Prefect API {attached.api_url}; Ray starts locally for this run",
            num_cpus or cores)


def _seconds(x: float) -> str:
    return f"{x:.0f} s" if x >= 100 else f"{x:.1f} s"


def _names(values) -> str:
    return ", ".join(values)


def render_plan(plan: RunPlan, est, *, services_line: str, basis_line: str) -> list[str]:
    cfg = plan.config
    w = cfg.windows
    d = plan.dataset_info
    wl = plan.workload
    pairs = len(cfg.rebalances) * len(cfg.simulators)
    lines = ["tournament run --plan: nothing computed, nothing written (no Ray, no Prefect "
             "server, no solve)",
             f"grid      selections {_names(cfg.selections)} ({len(cfg.selections)}) x engines "
             f"{_names(cfg.engines)} ({len(cfg.engines)}) x profiles {_names(cfg.profiles)} "
             f"({len(cfg.profiles)}), + baseline all/baseline/equal_weight",
             f"          x rebalances {_names(cfg.rebalances)} ({len(cfg.rebalances)}) x "
             f"simulators {_names(cfg.simulators)} ({len(cfg.simulators)}); fidelity "
             f"{cfg.fidelity}; top_k {cfg.top_k}",
             f"data      {d['source']}: {d['days']} days x {d['assets']} assets "
             f"({d['start']} to {d['end']})",
             f"windows   train {w.train} / test {w.test} / step {w.step}: {plan.n_windows} "
             f"windows, {plan.horizon} simulated days per strategy"]
    unsupported = plan.n_cells - plan.n_cells_supported
    lines.append(f"Stage 1   {plan.n_cells} cells ({plan.n_cells_supported} to solve, "
                 f"{unsupported} unsupported) in {plan.stage1_tasks} tasks; cached: "
                 f"{plan.n_cells_cached} cells ({plan.stage1_tasks_cached}/{plan.stage1_tasks} "
                 f"tasks); to compute: {plan.n_cells_supported - plan.n_cells_cached} cells")
    stage2 = (f"Stage 2   {plan.n_simulations} simulations ({wl.n_strategies} strategies x "
              f"{pairs} rebalance/simulator pairs) in {plan.stage2_tasks} tasks; cached: "
              f"{plan.n_simulations_cached} ({plan.stage2_tasks_cached}/{plan.stage2_tasks} tasks); "
              f"to compute: {plan.n_simulations - plan.n_simulations_cached}")
    if not plan.stage2_keys_known and not plan.refresh:
        stage2 += ("; Stage 2 keys follow from Stage 1's weights, so strategies whose "
                   "Stage 1 is not stored count as to compute (all assumed ok)")
    lines.append(stage2)
    if plan.refresh:
        store = f"{plan.storage} (--refresh: every chunk is recomputed)"
    elif plan.storage_checked:
        store = f"{plan.storage} (checked by key)"
    else:
        store = (f"{plan.storage} (not checked without the Prefect API or storage access: "
                 "counted as to compute)")
    lines += [f"storage   {store}", f"services  {services_line}", f"Ray CPUs  {wl.cpus}",
              f"estimate  {basis_line}"]
    p, e = est.phases, est.errors
    detail = {
        "startup": f"{wl.services} services; imports, server, Ray"
                   + (f"; data load {wl.data_load_seconds:.1f} s" if wl.data_load_seconds
                      is not None else ""),
        "stage1": f"{est.cpu['stage1']:.1f} s of solver CPU on {wl.cpus} CPUs, "
                  f"{plan.stage1_tasks - plan.stage1_tasks_cached} tasks to compute",
        "stage2": f"{est.cpu['stage2']:.1f} s of simulator CPU, "
                  f"{plan.stage2_tasks - plan.stage2_tasks_cached} tasks to compute",
        "outputs": "statistics, report, files, shutdown"}
    names = {"startup": "start-up", "stage1": "Stage 1", "stage2": "Stage 2",
             "outputs": "outputs"}
    for k in ("startup", "stage1", "stage2", "outputs"):
        lines.append(f"  {names[k]:9} {_seconds(p[k]):>8}  ±{e[k]:.0%}  ({detail[k]})")
    lo, hi = est.total * (1 - est.total_error), est.total * (1 + est.total_error)
    lines.append(f"  {'wall':9} {_seconds(est.total):>8}  ±{est.total_error:.0%}  "
                 f"({_seconds(lo)} to {_seconds(hi)})")
    m = est.memory_mb
    parts = [f"driver {m['driver'] / 1024:.1f}"]
    if m["ray_workers"]:
        parts.append(f"Ray workers {wl.cpus} x {m['ray_workers'] / wl.cpus / 1024:.2f}")
    if m["object_store"]:
        parts.append(f"object store {m['object_store'] / 1024:.2f}")
    if m["services"]:
        parts.append(f"temporary Prefect server and Ray's own processes "
                     f"{m['services'] / 1024:.1f}")
    lines.append(f"  {'peak mem':9} {m['total'] / 1024:>6.1f} GB  ±{est.memory_error:.0%}  "
                 f"({', '.join(parts)} GB)")
    lines += [f"  note: {n}" for n in est.notes]
    return lines


def load_lines(fit_load: float | None, *, shipped: bool) -> tuple[str, str | None]:
    """The machine's load now, against the load the shipped model was fitted under: the
    estimate does not scale with load, so a very different load is said, not priced."""
    cores = os.cpu_count() or 1
    try:
        now = os.getloadavg()[0]
    except OSError:
        return f"machine   {cores} cores (load average unknown)", None
    line = f"machine   {cores} cores, load average {now:.1f} (1 min)"
    if fit_load is None:
        return line, None
    line += f"; the shipped cost model was fitted at {fit_load:.1f}"
    if not shipped:
        return line, None
    # Busy above the cores: a process gets about cores / load of a core.
    now_share, fit_share = min(1.0, cores / max(now, 1e-9)), min(1.0, cores / max(fit_load, 1e-9))
    if now_share > 2 * fit_share:
        return line, ("the machine is much less loaded now than when the shipped model was "
                      "fitted: expect the run faster than estimated (up to "
                      f"{now_share / fit_share:.0f}x); an earlier run under --plan-history "
                      "rescales the estimate")
    if fit_share > 2 * now_share:
        return line, ("the machine is much more loaded now than when the shipped model was "
                      "fitted: expect the run slower than estimated")
    return line, None


def plan_command(config, dataset, *, result_storage: str | None, refresh: bool,
                 num_cpus: int | None, explicit_api_url: str | None, ray_address: str | None,
                 out: str | None, plan_history: str | None,
                 data_load_seconds: float | None = None, model: dict | None = None,
                 echo=print) -> dict:
    """`tournament run --plan`: print the plan and the estimate; returns them as a dict."""
    from tournament.calibration import calibrate, find_run_dirs, read_past_run
    from tournament.estimate import estimate, load_cost_model
    model = model or load_cost_model()
    mode, services_line, cpus = detect_services(explicit_api_url=explicit_api_url,
                                                explicit_ray=ray_address, num_cpus=num_cpus)
    plan = plan_run(config, dataset, result_storage=result_storage, refresh=refresh, cpus=cpus,
                    services=mode, data_load_seconds=data_load_seconds)
    roots = history_roots(plan_history, out)
    runs = [r for r in (read_past_run(p) for p in find_run_dirs(roots)) if r is not None]
    cal = calibrate(model, runs, workload_of=lambda r: past_workload(r, cpus=os.cpu_count() or 1))
    est = estimate(model, plan.workload, cal)
    where = ", ".join(str(r) for r in roots)
    machine = model.get("machine", {}).get("summary", "")
    if cal.empty:
        basis = (f"from the shipped cost model ({machine}): no earlier runs under {where} "
                 "(--plan-history DIR)")
    else:
        basis = (f"from {len(cal.runs)} earlier run(s) under {where} ({cal.n_cells} cells, "
                 f"{cal.n_sims} simulations measured), scaling the shipped cost model")
    lines = render_plan(plan, est, services_line=services_line, basis_line=basis)
    load_line, load_note = load_lines(model.get("machine", {}).get("fit_load"),
                                      shipped=cal.empty)
    lines.insert(next(i for i, x in enumerate(lines) if x.startswith("estimate ")), load_line)
    if load_note:
        lines.append(f"  note: {load_note}")
    for line in lines:
        echo(line)
    return {"estimate": est.to_dict(), "basis": est.basis, "history": cal.runs,
            "services": mode, "cpus": cpus,
            "counts": {"cells": plan.n_cells, "cells_cached": plan.n_cells_cached,
                       "stage1_tasks": plan.stage1_tasks,
                       "stage1_tasks_cached": plan.stage1_tasks_cached,
                       "simulations": plan.n_simulations,
                       "simulations_cached": plan.n_simulations_cached,
                       "stage2_tasks": plan.stage2_tasks,
                       "stage2_tasks_cached": plan.stage2_tasks_cached}}
