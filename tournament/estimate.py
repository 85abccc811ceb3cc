"""Pre-run estimate of a tournament's wall time and peak memory (`tournament run --plan`).

Pure arithmetic on a description of the work (no Prefect, no Ray, nothing solved): the
orchestration layer (flows/plan.py) says which chunks a run would compute and which are
already stored; this module prices them.

* **Per-unit costs.** A Stage 1 cell costs `cell_seconds(engine, profile, n, train)`: a table
  of measured seconds by problem size n (the assets the selection leaves: all eligible assets
  for `all`, `top_k` otherwise), interpolated log-log, times (train / ref_train) ** beta. A
  Stage 2 chunk costs `call + strategies x days x per_strategy_day[mode] x (assets/100) ** g`
  per simulator.
* **Wall time.** Chunks are list-scheduled on the Ray CPUs in submission order (a greedy
  makespan, so a long tail shows), each chunk paying a per-task overhead, everything scaled by
  a contention factor (on a small machine the driver and the Prefect server share the cores),
  plus fixed costs: start-up by services mode, a per-stage fixed cost, stored chunks replayed
  locally, outputs (statistics, report) growing with the results.
* **The shipped model** (`tournament/cost_model.json`) holds these numbers as fitted on
  one machine (`benchmarks/fit_cost_model.py` says how, the file says which machine).
* **History.** Earlier run directories calibrate it (tournament.calibration).
"""
from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


PHASES = ("startup", "stage1", "stage2", "outputs")
# A calibration ratio from history is clipped to this range: one odd run (a loaded machine,
# another grid's tail) must not make the estimate absurd.
FACTOR_RANGE = (0.33, 3.0)


def load_cost_model(path: str | Path | None = None) -> dict[str, Any]:
    """The shipped model (tournament/cost_model.json), or a JSON file of the same shape."""
    if path is not None:
        return json.loads(Path(path).read_text())
    from importlib import resources
    return json.loads(resources.files("tournament").joinpath("cost_model.json").read_text())


# ----------------------------------------------------------------------------- unit costs
def _interp_loglog(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise power law through (xs, ys); the end segments extrapolate."""
    x = max(float(x), 1.0)
    lx = [math.log(v) for v in xs]
    ly = [math.log(max(v, 1e-9)) for v in ys]
    t = math.log(x)
    if len(xs) == 1:
        return ys[0]
    i = 0
    while i < len(xs) - 2 and t > lx[i + 1]:
        i += 1
    slope = (ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i])
    if t < lx[0]:
        slope = max(slope, 0.0)         # never cheaper than free below the table
    return math.exp(ly[i] + slope * (t - lx[i]))


def cell_seconds(model: dict, engine: str, profile: str, n: int, train: int) -> float:
    """Model seconds of one supported Stage 1 cell (one core)."""
    s1 = model["stage1"]
    entry = s1["cells"].get(f"{engine}/{profile}") or s1["cells"]["default"]
    base = _interp_loglog(entry["n"], entry["seconds"], n)
    return base * (max(train, 2) / s1["ref_train"]) ** entry.get("beta", s1.get("beta", 0.5))


def sim_seconds(model: dict, simulator: str, rebalance: str, n_strategies: int, days: int,
                n_assets: int) -> float:
    """Model seconds of one Stage 2 call (a chunk of `n_strategies` of one simulator)."""
    s2 = model["stage2"]["simulators"]
    p = s2.get(simulator) or s2["default"]
    per = p["per_strategy_day"].get(rebalance, p["per_strategy_day"].get("window"))
    scale = (max(n_assets, 1) / model["stage2"]["ref_assets"]) ** p.get("asset_exp", 0.5)
    if p.get("batched"):            # one vectorised call for the whole chunk
        return p.get("call", 0.0) + n_strategies * days * per * scale
    return n_strategies * (p.get("call", 0.0) + days * per * scale)   # one backtest each


def makespan(durations: list[float], workers: int) -> float:
    """Greedy list scheduling in the given (submission) order on `workers` equal workers."""
    if not durations:
        return 0.0
    free = [0.0] * max(int(workers), 1)
    heapq.heapify(free)
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


# ----------------------------------------------------------------------------- the work
@dataclass
class Stage1Chunk:
    """One Stage 1 task: its supported cells as (engine, profile, problem size) and whether
    its result is already stored. Unsupported cells cost nothing and are left out."""
    cells: list[tuple[str, str, int]]
    cached: bool = False


@dataclass
class Stage2Chunk:
    simulator: str
    rebalance: str
    n_strategies: int
    cached: bool = False


@dataclass
class Workload:
    """What a run will do, as far as its cost goes."""
    n_days: int
    n_assets: int
    train: int
    horizon: int                       # simulated days per strategy
    cpus: int                          # Ray CPUs the run would use
    services: str                      # temporary | first_boot | up | explicit
    stage1: list[Stage1Chunk] = field(default_factory=list)
    stage2: list[Stage2Chunk] = field(default_factory=list)
    n_strategies: int = 0              # distinct strategies simulated (ok, incl. baseline)
    n_result_rows: int = 0             # strategies x rebalances x simulators
    data_load_seconds: float | None = None   # measured by the plan itself when known
    simulators: tuple[str, ...] = ()
    engines: tuple[str, ...] = ()
    n_cells: int = 0                   # every cell of the cube (unsupported included)


@dataclass
class Calibration:
    """Ratios measured / model from earlier runs (1.0 where nothing was measured)."""
    cells: dict[str, float] = field(default_factory=dict)      # "engine/profile"
    sims: dict[str, float] = field(default_factory=dict)       # "simulator/rebalance"
    phases: dict[str, float] = field(default_factory=dict)     # startup@mode, stage1, ...
    runs: list[str] = field(default_factory=list)
    n_cells: int = 0
    n_sims: int = 0

    @property
    def empty(self) -> bool:
        return not self.runs

    def cell(self, engine: str, profile: str) -> float:
        return self.cells.get(f"{engine}/{profile}", self.cells.get("*", 1.0))

    def sim(self, simulator: str, rebalance: str) -> float:
        return self.sims.get(f"{simulator}/{rebalance}", self.sims.get(f"{simulator}/*", 1.0))


@dataclass
class Estimate:
    phases: dict[str, float]
    errors: dict[str, float]           # relative, e.g. 0.3 = ±30%
    total: float
    total_error: float
    memory_mb: dict[str, float]
    memory_error: float
    cpu: dict[str, float]              # compute seconds (one core) in each stage, uncached
    basis: str                         # "history" or "shipped"
    notes: list[str] = field(default_factory=list)

    @property
    def peak_memory_mb(self) -> float:
        return self.memory_mb["total"]

    def to_dict(self) -> dict[str, Any]:
        return {"phases": self.phases, "errors": self.errors, "total": self.total,
                "total_error": self.total_error, "memory_mb": self.memory_mb,
                "memory_error": self.memory_error, "cpu": self.cpu, "basis": self.basis,
                "notes": self.notes}


# ----------------------------------------------------------------------------- estimate
def stage1_cpu(model: dict, w: Workload, cal: Calibration | None = None) -> list[float]:
    """Model compute seconds of each uncached Stage 1 chunk (cached chunks: 0)."""
    cal = cal or Calibration()
    return [0.0 if ch.cached else sum(cell_seconds(model, e, p, n, w.train) * cal.cell(e, p)
                                      for e, p, n in ch.cells) for ch in w.stage1]


def stage2_cpu(model: dict, w: Workload, cal: Calibration | None = None) -> list[float]:
    cal = cal or Calibration()
    return [0.0 if ch.cached else sim_seconds(model, ch.simulator, ch.rebalance, ch.n_strategies,
                                              w.horizon, w.n_assets)
            * cal.sim(ch.simulator, ch.rebalance) for ch in w.stage2]


def raw_phases(model: dict, w: Workload, cal: Calibration | None = None) -> dict[str, float]:
    """Seconds per phase before the history's phase factors."""
    o = model["overheads"]
    cpus = max(w.cpus, 1)
    c1, c2 = stage1_cpu(model, w, cal), stage2_cpu(model, w, cal)
    n1 = sum(not ch.cached for ch in w.stage1)
    n2 = sum(not ch.cached for ch in w.stage2)
    k = o["contention"].get(str(cpus), o["contention"]["default"])
    replay = o["replay_per_task"] / o["replay_threads"]

    startup = o["startup"].get(w.services, o["startup"]["temporary"])
    startup += (w.data_load_seconds if w.data_load_seconds is not None
                else o["data_load_per_mcell"] * w.n_days * w.n_assets / 1e6)
    attach = w.services in ("up", "explicit")     # Ray attached/started lazily, in a stage
    stage1 = o["stage1_fixed"] + o["per_cell_bookkeeping"] * w.n_cells
    if n1:
        stage1 += o["stage1_first_task"] + (o.get("ray_attach", 0.0) if attach else 0.0)
        stage1 += makespan(
            [k * (c + o["task"]) for c, ch in zip(c1, w.stage1) if not ch.cached], cpus)
    stage1 += replay * (len(w.stage1) - n1)
    stage2 = o["stage2_fixed"]
    if n2:
        stage2 += o["stage2_first_task"] + makespan(
            [k * (c + o["task"]) for c, ch in zip(c2, w.stage2) if not ch.cached], cpus)
        if n1 == 0:                           # Ray starts only when Stage 2 needs it
            stage2 += o.get("ray_attach", 0.0) if attach else o["ray_lazy_start"]
    stage2 += replay * (len(w.stage2) - n2)
    outputs = (o["outputs_fixed"] + o["outputs_per_row"] * w.n_result_rows
               + o["outputs_per_strategy_day"] * w.n_strategies * w.horizon)
    if w.services in ("temporary", "first_boot"):
        outputs += o["temporary_stop"]
    else:                                   # no temporary server to stop at the end
        outputs += o.get("outputs_up_delta", 0.0)
    outputs = max(outputs, 0.5)
    return {"startup": startup, "stage1": stage1, "stage2": stage2, "outputs": outputs}


def memory_mb(model: dict, w: Workload) -> dict[str, float]:
    """Peak resident memory of the run's processes, by part (MB)."""
    m = model["memory"]
    n_all = w.n_assets
    matrix_mb = w.n_days * w.n_assets * 8 / 2 ** 20
    cube_mb = w.n_cells * w.n_assets * 8 / 2 ** 20
    paths_mb = w.n_result_rows * w.horizon * m["bytes_per_path_day"] / 2 ** 20
    driver = m["driver"] + m["driver_per_matrix_mb"] * (matrix_mb + cube_mb) + paths_mb
    per_worker = m["worker"] + m["worker_per_100_assets_sq"] * (n_all / 100.0) ** 2
    per_worker += sum(m["simulator_import"].get(s, 0.0) for s in w.simulators)
    computing = any(not ch.cached for ch in w.stage1) or any(not ch.cached for ch in w.stage2)
    workers = w.cpus * per_worker if computing else 0.0
    if computing and "nautilus" in w.simulators and any(
            ch.simulator == "nautilus" and not ch.cached for ch in w.stage2):
        workers += min(w.cpus, sum(ch.simulator == "nautilus" for ch in w.stage2)) * m["nautilus_child"]
    store = (matrix_mb + cube_mb) if computing else 0.0
    server = m["prefect_server"] if w.services in ("temporary", "first_boot") else 0.0
    total = driver + workers + store + server
    return {"driver": driver, "ray_workers": workers, "object_store": store,
            "services": server, "total": total}


def estimate(model: dict, w: Workload, cal: Calibration | None = None) -> Estimate:
    cal = cal if cal is not None and not cal.empty else None
    phases = raw_phases(model, w, cal)
    notes = []
    if cal is not None:
        for name in PHASES:
            key = f"startup@{w.services}" if name == "startup" else name
            if key in cal.phases:
                phases[name] *= cal.phases[key]
    err = model["error"]
    errors = {p: err["phases"].get(p, err["wall"]) for p in PHASES}
    total = sum(phases.values())
    # The phases' errors are not independent (one machine, one load); the total's error is
    # the stated wall error, widened when the estimate rests on the shipped model alone.
    total_error = err["wall"] if cal is not None else err.get("wall_shipped", err["wall"])
    if w.services == "first_boot":
        notes.append("first boot of a Prefect server on this PREFECT_HOME: creating its "
                     "database varies most (20-60 s on 2 cores)")
        errors["startup"] = max(errors["startup"], 0.6)
        total_error = max(total_error, 0.6 * phases["startup"] / max(total, 1e-9))
    c1, c2 = stage1_cpu(model, w, cal), stage2_cpu(model, w, cal)
    mem = memory_mb(model, w)
    return Estimate(phases=phases, errors=errors, total=total, total_error=total_error,
                    memory_mb=mem, memory_error=err["memory"],
                    cpu={"stage1": sum(c1), "stage2": sum(c2)},
                    basis="history" if cal is not None else "shipped", notes=notes)


# ----------------------------------------------------------------------------- sizes
def problem_size(selection: str, n_assets: int, top_k: int) -> int:
    return n_assets if selection == "all" else min(top_k, n_assets)


def horizon_days(n_days: int, train: int, test: int, step: int) -> int:
    """Simulated days per strategy: the first rebalance day through the newest day
    (tournament.windows; with test < step a path ends with its last window's test)."""
    if n_days < train:
        return 0
    last_rebalance = train - 1 + (n_days - train) // step * step
    return min(last_rebalance + test, n_days - 1) - (train - 1) + 1