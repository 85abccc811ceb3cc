"""What a run will compute: chunks of work and their cache keys, without Prefect or Ray.

The parent flow and the CLI share this, so the CLI can tell before any service starts
whether Stage 1 has anything to compute (a warm rerun then never starts Ray), and the flow
can run chunks that are already in result storage in its own process (no Ray round trip,
no transfer of the returns matrix or the cube) while Prefect still records them as Cached.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from tournament.keys import (cache_key, cell_key_parts, horizon_fingerprint,
                             simulation_key_parts, slice_fingerprint, stage1_chunk_parts,
                             stage2_key_parts)
from tournament.stage1 import engine_instance, plan_cells
from tournament.schema import OK, STRATEGY_KEYS

DEFAULT_RESULT_STORAGE = ".tournament-cache/results"

# Stage 1 chunking: a task costs ~0.1-0.2 s of Prefect/Ray overhead, so a chunk should hold
# about TARGET_CHUNK_SECONDS of solving. Measured mean cost per supported cell over the
# engine mix: ~3 ms at 20 assets, ~20 ms at 100, ~45 ms at 200 (one core).
TARGET_CHUNK_SECONDS = 4.0
MAX_WINDOW_BLOCKS = 8

# Strategies per Stage 2 task by simulator: batched simulators take a whole selection group;
# per-strategy simulators (~1 s per backtest) get small chunks to balance the workers.
STAGE2_CHUNK = {"custom": None, "vectorbt": None, "cvxportfolio": 4, "nautilus": 2}
# Rough relative cost per strategy, to submit the slowest chunks first (shorter tail).
STAGE2_COST = {"custom": 0.01, "vectorbt": 0.2, "cvxportfolio": 1.0, "nautilus": 2.0}


@dataclass
class Chunk:
    """One task's worth of work: its display name, its members, its cache key, and each
    member's own key (`unit_keys`, aligned with `members`; None = never stored: an
    unsupported cell), under which the task stores and finds that member's result."""
    name: str
    members: list
    key: str
    parts: dict
    unit_keys: list

    def task_kwargs(self) -> dict:
        return {"chunk_name": self.name, "cache_key": self.key, "key_parts": self.parts,
                "unit_keys": self.unit_keys}

    def stored_units(self) -> list[str]:
        return [k for k in self.unit_keys if k is not None]


def replayable(chunks: list[Chunk], exists) -> set[str]:
    """Keys of the chunks that compute nothing: stored themselves, or every unit stored
    (`exists(key)`: is that key in result storage). Units are looked up only for chunks not
    stored whole."""
    return {c.key for c in chunks
            if exists(c.key) or all(exists(k) for k in c.stored_units())}


def stored_key(key: str) -> str:
    """The key a task stores its result under. Under test-only fault injection
    (TOURNAMENT_FAULTS, see tournament.faults) the rules are part of the key, so injected
    failures never poison the cache of normal runs."""
    faults = os.environ.get("TOURNAMENT_FAULTS", "").strip()
    if faults:
        key += "-faults-" + hashlib.sha256(faults.encode()).hexdigest()[:10]
    return key


def estimated_cell_seconds(n_assets: int) -> float:
    return 3e-3 * max(n_assets / 20.0, 1.0) ** 1.2


def stage1_chunks(cells, *, n_assets: int) -> list[tuple[str, list]]:
    """Chunk cells so each task holds ~TARGET_CHUNK_SECONDS of work.

    Small problems: one chunk per (selection, engine). Large ones: one per (selection,
    engine, profile), split into fixed blocks of consecutive windows. A chunk's membership
    depends only on its own cells' identity and the data shape, so changing one selection
    mode leaves every other chunk (and its cache key) unchanged.
    """
    per_cell = estimated_cell_seconds(n_assets)
    groups: dict[tuple, list] = {}
    for c in cells:
        groups.setdefault((c.selection, c.engine), []).append(c)
    out = []
    for (sel, eng), group in sorted(groups.items()):
        if len(group) * per_cell <= TARGET_CHUNK_SECONDS:
            out.append((f"{sel}/{eng}", group))
            continue
        n_windows = max(c.window for c in group) + 1
        # ~TARGET seconds per chunk, but at most MAX_WINDOW_BLOCKS blocks per strategy so the
        # task count stays in the hundreds (Prefect slows down past ~2k tasks per run).
        block = max(1, int(TARGET_CHUNK_SECONDS / per_cell), -(-n_windows // MAX_WINDOW_BLOCKS))
        by_profile: dict[str, list] = {}
        for c in group:
            by_profile.setdefault(c.profile, []).append(c)
        for prof, cs in sorted(by_profile.items()):
            blocks: dict[int, list] = {}
            for c in sorted(cs, key=lambda c: c.window):     # block = window index // size
                blocks.setdefault(c.window // block, []).append(c)
            for piece in blocks.values():
                out.append((f"{sel}/{eng}/{prof}/w{piece[0].window}-{piece[-1].window}", piece))
    return out


def stage1_plan(config, dataset, windows) -> tuple[list[Chunk], dict[str, dict]]:
    """Stage 1's chunks, and every cell's key parts ({cell key: parts}, what cache_keys.json
    records). Each window's training slice is fingerprinted once, for all its cells."""
    dates = [str(dataset.dates[w.rebalance].date()) for w in windows]
    slices = [slice_fingerprint(dataset.returns, dataset.dates, dataset.assets, w.train_rows)
              for w in windows]
    out, cell_parts = [], {}
    for name, cells in stage1_chunks(plan_cells(config, windows), n_assets=dataset.n_assets):
        unit_keys = []
        for c in cells:
            if not engine_instance(c.engine).supports(c.profile):
                unit_keys.append(None)          # never solved, never stored
                continue
            parts = cell_key_parts(c, window_date=dates[c.window],
                                   slice_fingerprint=slices[c.window], config=config)
            unit_keys.append(cache_key(parts))
            cell_parts[unit_keys[-1]] = parts
        # An unsupported cell is named, so its recorded reason belongs to this chunk's key.
        parts = stage1_chunk_parts([k or f"unsupported {c.engine}/{c.profile}"
                                    for k, c in zip(unit_keys, cells)])
        out.append(Chunk(name, cells, cache_key(parts), parts, unit_keys))
    return out, cell_parts


def stage2_chunks(keys, simulator: str) -> list[tuple[str, list]]:
    """Group strategies by selection, then fixed-size pieces for per-strategy simulators."""
    size = STAGE2_CHUNK.get(simulator)
    groups: dict[str, list] = {}
    for k in sorted(keys):
        groups.setdefault(k[0], []).append(k)
    out = []
    for sel, group in sorted(groups.items()):
        step = size or len(group)
        for i in range(0, len(group), step):
            out.append((f"{sel}#{i // step}", group[i:i + step]))
    return out


@dataclass
class SimulationChunk(Chunk):
    rebalance: str = ""
    simulator: str = ""
    cost: float = 0.0

    def task_kwargs(self) -> dict:
        return {**super().task_kwargs(), "rebalance": self.rebalance, "simulator": self.simulator}


def stage2_plan(config, dataset, cube, strategies, pairs) -> list[SimulationChunk]:
    """Stage 2 chunks, most expensive first (a shorter tail on the workers). The data enters
    each key as the fingerprint of the horizon rows every path simulates, once."""
    from tournament.simulators.orders import horizon_rows
    digests = {k: cube.schedule_digest(k) for k in strategies}
    rows, end = horizon_rows(cube, dataset.dates)
    returns_fp = horizon_fingerprint(dataset.returns, dataset.dates, dataset.assets,
                                     int(rows[0]), end)
    out = []
    for rebalance, simulator in pairs:
        for name, chunk in stage2_chunks(strategies, simulator):
            parts = stage2_key_parts([digests[k] for k in chunk], rebalance=rebalance,
                                     simulator=simulator, returns_fingerprint=returns_fp,
                                     config=config)
            units = [cache_key(simulation_key_parts(parts, digests[k])) for k in chunk]
            cost = STAGE2_COST.get(simulator, 1.0) * len(chunk) * (3 if rebalance == "daily" else 1)
            out.append(SimulationChunk(f"{rebalance}/{simulator}/{name}", chunk, cache_key(parts),
                                       parts, units, rebalance=rebalance, simulator=simulator,
                                       cost=cost))
    out.sort(key=lambda c: -c.cost)
    return out


def local_storage_path(location: str | os.PathLike) -> Path | None:
    """The directory of a local result storage, or None for a remote (fsspec) one."""
    location = str(location)
    if "://" in location and not location.startswith("file://"):
        return None
    return Path(location.removeprefix("file://")).expanduser().resolve()


def uncached_count(chunks: list[Chunk], location: str | os.PathLike | None) -> int | None:
    """How many chunks would compute something (neither stored whole nor every unit
    stored; a file check, no Prefect): None when the storage is remote and cannot be
    checked this cheaply."""
    path = local_storage_path(location or DEFAULT_RESULT_STORAGE)
    if path is None:
        return None
    return len(chunks) - len(replayable(chunks, lambda k: (path / stored_key(k)).exists()))


# ----------------------------------------------------------------------------- --plan
# `tournament run --plan`: what a run would compute, what is already stored, and what it
# would cost (tournament.estimate), computing nothing: no Ray, no Prefect server, no solve.
# It reads result storage (which keys exist; stored Stage 1 results, to know Stage 2's keys)
# and earlier run directories (their measured costs).
DEFAULT_PLAN_HISTORY = "runs"
RESULT_STORAGE_BLOCK_ENV = "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"


def _supported(engine: str, profile: str) -> bool:
    from tournament.stage1 import engine_instance
    return engine_instance(engine).supports(profile)


def stored_keys(keys: list[str], location: str | None) -> set[str] | None:
    """The keys among `keys` whose result is in storage; None when it cannot be checked
    without Prefect's API (a storage block slug) or the check fails."""
    from .runtime import is_block_slug
    location = str(location or DEFAULT_RESULT_STORAGE)
    try:
        if is_block_slug(location):
            return None                   # a saved block: Block.load needs the Prefect API
    except Exception:      # noqa: BLE001
        return None
    path = local_storage_path(location)
    if path is not None:
        return {k for k in keys if (path / stored_key(k)).exists()}
    try:
        import fsspec
        fs, root = fsspec.core.url_to_fs(location)
        return {k for k in keys if fs.exists(f"{root.rstrip('/')}/{stored_key(k)}")}
    except Exception:      # noqa: BLE001 - unknown, not an error: the plan says so
        return None


def stored_units(chunks: list[Chunk], location: str | None
                 ) -> tuple[set[str], set[str]] | None:
    """(chunk keys stored, unit keys stored) of `chunks`; None when storage cannot be
    checked. A chunk stored whole has every unit stored (its task wrote each one); the
    others' units are looked up one by one."""
    whole = stored_keys([c.key for c in chunks], location)
    if whole is None:
        return None
    rest = stored_keys([k for c in chunks if c.key not in whole for k in c.stored_units()],
                       location)
    if rest is None:
        return None
    return whole, rest | {k for c in chunks if c.key in whole for k in c.stored_units()}


def load_stored(key: str, location: str | None):
    """A stored task result (local storage only), or None. Prefect's result record format;
    a pickle, so only from storage this tool wrote (see README, Trust)."""
    from .runtime import is_block_slug
    location = str(location or DEFAULT_RESULT_STORAGE)
    path = None if is_block_slug(location) else local_storage_path(location)
    if path is None:
        return None
    try:
        from prefect._internal.result_records import ResultRecord
        return ResultRecord.deserialize((path / stored_key(key)).read_bytes()).result
    except Exception:      # noqa: BLE001 - unreadable: counted as not stored
        return None


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
