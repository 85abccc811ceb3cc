"""Multi-fidelity racing: the cheap tier on every strategy, only the best on the dear ones.

Pure pandas/numpy (the model confidence set through tournament.confidence); no Prefect, no
Ray. The flow (flows/tournament_flow.py) and the notebook entry point (`run_race`) give it
a `simulate(pairs, strategies)` callback and it decides what each tier simulates.

* Tiers (`race_tiers`): each simulator belongs to the lowest fidelity tier that lists it
  (registry.FIDELITY_TIERS: low = custom; medium adds vectorbt; high adds cvxportfolio and
  nautilus). A simulator no tier lists gets a tier of its own, after the known ones.
* A unit of the race is a distinct strategy: (selection, engine, profile, rebalance).
  The first tier simulates every ok strategy of the cube under every rebalance mode.
* Promotion out of a tier (`promote`): rank the units the tier ran by Sharpe (of the tier's
  highest-fidelity simulator; ties broken by the keys, failed/NaN last), then take the top
  `top_k` plus the units inside the model confidence set (computed once, on the complete
  cheap-tier matrix: tournament.confidence). That set is capped at `cap` x the number of
  strategies the first tier ran ok (rounded down, at least 1), best ranks first.
* Before promoting out of a tier other than the first, the tier's ranking is checked
  against the previous tier's on the units both ran ok (Kendall tau-b, stats.kendall_tau).
  Below `min_tau`, or undefined (fewer than 2 units, or a constant ranking), the tier is
  unreliable: with `on_disagreement = "widen"` every unit it ran is promoted, without using
  its ranking (the set is already within the cap: it was promoted into this tier), and the
  reason says so; with `"stop"` the race raises `RaceStopped` with the numbers. Nothing is
  ever promoted from an unreliable tier's ranking.
* `annotate` adds to every results row: `race_tier` (the tier whose simulator produced the
  row), `race_promoted` (whether the unit was promoted out of that tier; <NA> in the last
  tier and for the benchmark) and `race_reason` (why, with the rank, K, the set and cap).

The statistics are untouched by the race: the DSR trial count, the confidence set and SPA
use the lowest-fidelity simulator that ran every strategy (strategy_paths), i.e. the
complete cheap-tier matrix; overfitting.add_overfitting_columns gives the simulators a race
ran on a subset the cheap tier's PBO (see there).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import ConfigError
from .registry import FIDELITY_TIERS
from .schema import BENCHMARK_SELECTION, OK, PATH_KEYS
from .stats import kendall_tau

UNIT = PATH_KEYS            # what races: a distinct strategy (weights x rebalance mode)
DISAGREEMENT_ACTIONS = ("widen", "stop")
RACE_COLUMNS = ("race_tier", "race_promoted", "race_reason")


class RaceStopped(RuntimeError):
    """Two tiers rank the strategies too differently to promote (on_disagreement = stop)."""


@dataclass(frozen=True)
class RaceSettings:
    top_k: int = 10                   # best-ranked units promoted out of each tier
    cap: float = 0.25                 # at most this share of the strategies is promoted
    min_tau: float = 0.5              # Kendall tau below which a tier is not trusted
    on_disagreement: str = "widen"    # widen | stop

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"race top_k: {self.top_k!r} must be an integer >= 1")
        if not 0 < float(self.cap) <= 1:
            raise ConfigError(f"race cap: {self.cap!r} must be in (0, 1]")
        if not -1 <= float(self.min_tau) <= 1:
            raise ConfigError(f"race min_tau: {self.min_tau!r} must be in [-1, 1]")
        if self.on_disagreement not in DISAGREEMENT_ACTIONS:
            raise ConfigError(f"race on_disagreement: {self.on_disagreement!r}; valid: "
                              + ", ".join(DISAGREEMENT_ACTIONS))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RaceSettings":
        d = dict(d or {})
        unknown = set(d) - {"top_k", "cap", "min_tau", "on_disagreement"}
        if unknown:
            raise ConfigError(f"race: unknown setting(s) {', '.join(sorted(unknown))}; valid: "
                              "cap, min_tau, on_disagreement, top_k")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cap_count(self, n_strategies: int) -> int:
        return max(1, int(math.floor(self.cap * n_strategies + 1e-9)))


def race_tiers(simulators, tiers: dict[str, tuple[str, ...]] = FIDELITY_TIERS
               ) -> list[tuple[str, tuple[str, ...]]]:
    """[(tier name, its simulators among `simulators`)], lowest fidelity first; tiers with
    none of them are left out; simulators no tier lists get one tier each (by name)."""
    simulators = list(dict.fromkeys(simulators))
    placed: dict[str, str] = {}
    for name, members in tiers.items():       # dict order = rising fidelity
        for s in members:
            placed.setdefault(s, name)
    out = [(name, tuple(s for s in simulators if placed.get(s) == name)) for name in tiers]
    out = [(name, sims) for name, sims in out if sims]
    out += [(s, (s,)) for s in sorted(s for s in simulators if s not in placed)]
    return out


@dataclass
class TierDecision:
    """What happened at one tier, for the manifest, the report and results.parquet."""
    tier: str
    simulators: tuple[str, ...]
    ranked_by: str
    n_ran: int                         # units the tier simulated
    n_ok: int                          # of which ok under `ranked_by`
    n_strategies: int                  # units of the first tier (what the cap is a share of)
    top_k: int
    cap: int
    next_tier: str | None = None
    tau: float | None = None           # vs the previous tier, on the units both ran ok
    tau_against: str | None = None
    n_compared: int = 0
    reliable: bool = True
    action: str = "rank"               # rank | widen | last
    set_size: int = 0                  # top_k + MCS members among the ranked, before the cap
    n_mcs: int = 0
    promoted: list[tuple] = field(default_factory=list)
    reasons: dict[tuple, str] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "simulators": list(self.simulators),
                "ranked_by": self.ranked_by, "n_ran": self.n_ran, "n_ok": self.n_ok,
                "n_strategies": self.n_strategies, "top_k": self.top_k, "cap": self.cap,
                "next_tier": self.next_tier,
                "tau": None if self.tau is None or not math.isfinite(self.tau)
                else round(self.tau, 6),
                "tau_against": self.tau_against, "n_compared": self.n_compared,
                "reliable": self.reliable, "action": self.action, "set_size": self.set_size,
                "n_mcs": self.n_mcs, "n_promoted": len(self.promoted), "message": self.message}


def _units(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(map(str, r)) for r in frame[UNIT].itertuples(index=False)]


def _ranking(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per unit: ok ones by Sharpe descending (NaN last), ties by the keys; then the
    ones that are not ok. Columns: unit, ok, sharpe, reason, rank (1-based, ok ones only)."""
    rows = rows[rows["selection"] != BENCHMARK_SELECTION]
    frame = pd.DataFrame({"unit": _units(rows), "ran": (rows["status"] == OK).to_numpy(),
                          "sharpe": rows["sharpe"].to_numpy(dtype=float)
                          if "sharpe" in rows else np.nan,
                          "reason": rows["reason"].astype(object).to_numpy()
                          if "reason" in rows else ""})
    frame = frame.drop_duplicates("unit")
    frame["_nan"] = ~np.isfinite(frame["sharpe"].to_numpy(dtype=float)) | ~frame["ran"]
    frame["_neg"] = -frame["sharpe"].fillna(0.0)
    frame["_key"] = frame["unit"].map(lambda u: "/".join(u))
    frame = frame.sort_values(["_nan", "_neg", "_key"], kind="stable").reset_index(drop=True)
    frame["rank"] = np.where(frame["ran"], np.arange(1, len(frame) + 1), 0)
    return frame.drop(columns=["_nan", "_neg", "_key"])


def _label(unit: tuple) -> str:
    return "/".join(unit)


def promote(rows: pd.DataFrame, *, tier: str, simulators: tuple[str, ...],
            previous: pd.DataFrame | None, previous_simulator: str | None,
            mcs: set[tuple], n_strategies: int, settings: RaceSettings,
            next_tier: str | None) -> TierDecision:
    """Decide which units leave `tier` for `next_tier` (module docstring).

    rows: results rows of this tier (any of its simulators; ranked by the last one, the
    highest fidelity). previous: the previous tier's rows of `previous_simulator` (None for
    the first tier). mcs: units inside the model confidence set (cheap tier).
    Raises RaceStopped when the tier is unreliable and settings.on_disagreement == "stop".
    """
    ranked_by = simulators[-1]
    own = rows[rows["simulator"] == ranked_by]
    ranking = _ranking(own)
    ok = ranking[ranking["ran"]]
    cap = settings.cap_count(n_strategies)
    d = TierDecision(tier=tier, simulators=tuple(simulators), ranked_by=ranked_by,
                     n_ran=len(ranking), n_ok=len(ok), n_strategies=n_strategies,
                     top_k=settings.top_k, cap=cap, next_tier=next_tier)
    n = len(ok)
    where = f"by {ranked_by} Sharpe"

    # Rank agreement with the previous tier on the units both ran ok.
    if previous is not None:
        prev = _ranking(previous[previous["simulator"] == previous_simulator])
        prev = prev[prev["ran"]].set_index("unit")["sharpe"]
        both = ok[ok["unit"].isin(prev.index)]
        d.tau_against, d.n_compared = previous_simulator, len(both)
        d.tau = kendall_tau(both["sharpe"].to_numpy(dtype=float),
                            prev.loc[list(both["unit"])].to_numpy(dtype=float)) if len(both) else math.nan
        d.reliable = bool(math.isfinite(d.tau) and d.tau >= settings.min_tau)
        agreement = (f"Kendall tau {d.tau:.3f} vs {previous_simulator} on {d.n_compared} "
                     f"strategies (threshold {settings.min_tau:g})")
    else:
        agreement = "first tier: no earlier tier to check its ranking against"

    for row in ranking[~ranking["ran"]].itertuples(index=False):
        d.reasons[row.unit] = f"not promoted: not ok under {ranked_by} ({row.reason})"

    if next_tier is None:
        d.action = "last"
        for row in ok.itertuples(index=False):
            d.reasons[row.unit] = f"final tier: rank {row.rank}/{n} {where}"
        d.message = (f"tier {tier} ({', '.join(simulators)}): final tier, {n} strategies "
                     f"ranked {where}; {agreement}")
        if not d.reliable:
            d.message += " -- below the threshold: this tier's ranking disagrees with the last one"
        return d

    if not d.reliable:
        if settings.on_disagreement == "stop":
            raise RaceStopped(
                f"race stopped at tier {tier}: its ranking {where} disagrees with "
                f"{previous_simulator}'s ({agreement}); nothing promoted to tier {next_tier}. "
                "Rerun without --race, or with --race-on-disagreement widen, or lower "
                "--race-min-tau.")
        d.action = "widen"
        d.promoted = list(ok["unit"])
        d.set_size = n
        for row in ok.itertuples(index=False):
            d.reasons[row.unit] = (f"promoted to {next_tier} without ranking: tier {tier} is "
                                   f"unreliable ({agreement}), so every strategy it ran goes on")
        d.message = (f"tier {tier}: UNRELIABLE ({agreement}); its ranking was not used: all "
                     f"{n} strategies it ran promoted to {next_tier}")
        return d

    top = set(ok["unit"].iloc[:settings.top_k])
    in_mcs = {u for u in ok["unit"] if u in mcs}
    candidates = [u for u in ok["unit"] if u in top or u in in_mcs]   # in rank order
    d.set_size, d.n_mcs = len(candidates), len(in_mcs)
    d.promoted = candidates[:cap]
    kept = set(d.promoted)
    for row in ok.itertuples(index=False):
        u = row.unit
        why = [f"top {settings.top_k}"] if u in top else []
        if u in in_mcs:
            why.append("in the model confidence set")
        head = f"rank {row.rank}/{n} {where}"
        if u in kept:
            d.reasons[u] = f"promoted to {next_tier}: {head}, " + " and ".join(why)
        elif why:
            d.reasons[u] = (f"not promoted: {head}, {' and '.join(why)}, but over the cap "
                            f"({cap} = {settings.cap:g} x {n_strategies} strategies)")
        else:
            d.reasons[u] = (f"not promoted: {head}, not top {settings.top_k}, not in the "
                            "model confidence set")
    d.message = (f"tier {tier} ({', '.join(simulators)}): {n} strategies ranked {where}; "
                 f"{agreement}; top {settings.top_k} or in the confidence set "
                 f"({len(in_mcs)}): {d.set_size}, cap {cap} ({settings.cap:g} x {n_strategies}): "
                 f"{len(d.promoted)} promoted to {next_tier}")
    return d


def annotate(results: pd.DataFrame, decisions: list[TierDecision]) -> pd.DataFrame:
    """A copy of `results` with RACE_COLUMNS (module docstring)."""
    out = results.copy()
    tier_of = {s: d for d in decisions for s in d.simulators}
    promoted_by = {d.tier: set(d.promoted) for d in decisions}
    tiers, promoted, reasons = [], [], []
    for row in out[[*UNIT, "simulator"]].itertuples(index=False):
        d = tier_of.get(row.simulator)
        unit = tuple(map(str, row[:4]))
        tiers.append(d.tier if d else None)
        if d is None or row.selection == BENCHMARK_SELECTION:
            promoted.append(pd.NA)
            reasons.append("benchmark: not raced" if d else "")
            continue
        promoted.append(pd.NA if d.next_tier is None else unit in promoted_by[d.tier])
        reasons.append(d.reasons.get(unit, "not simulated at this tier: not ok before it"))
    out["race_tier"] = pd.array(tiers, dtype=object)
    out["race_promoted"] = pd.array(promoted, dtype="boolean")
    out["race_reason"] = pd.array(reasons, dtype=object)
    return out


def mcs_units(results: pd.DataFrame, returns: pd.DataFrame) -> tuple[set[tuple], dict]:
    """Units inside the model confidence set of the (complete) rows given, and its record."""
    from .confidence import confidence_table
    res = confidence_table(results, returns)
    table = res.table
    inside = table[table["mcs"].astype("boolean").fillna(False).to_numpy(dtype=bool)]
    return set(_units(inside)), {"simulator": res.simulator, "n_in_mcs": len(inside),
                                 "n_strategies": int(len(table)), "notes": list(res.notes)}


Simulate = Callable[[list[tuple[str, str]], dict[str, list[tuple[str, str, str]]] | None], list]


def run_race(simulate: Simulate, *, config, results_of: Callable[[list], tuple],
             settings: RaceSettings, tiers: list[tuple[str, tuple[str, ...]]] | None = None,
             log: Callable[[str], None] = lambda line: None
             ) -> tuple[list, list[TierDecision], dict[str, Any]]:
    """Race the tiers. `simulate(pairs, strategies)` simulates `pairs` ((rebalance,
    simulator)) for `strategies` ({rebalance: [(selection, engine, profile)]}, None = every ok
    strategy) and returns SimulationResults; `results_of(sims)` turns simulations into
    (results, returns) frames (stage2.results_frame). Returns (every simulation, the tier
    decisions, a manifest record)."""
    tiers = tiers if tiers is not None else race_tiers(config.simulators)
    sims: list = []
    decisions: list[TierDecision] = []
    strategies: dict[str, list] | None = None
    mcs: set[tuple] = set()
    mcs_record: dict[str, Any] = {}
    n_strategies = 0
    previous = None
    for i, (tier, tier_sims) in enumerate(tiers):
        pairs = [(r, s) for r in config.rebalances for s in tier_sims]
        if strategies is not None:
            pairs = [(r, s) for r, s in pairs if strategies.get(r)]
        sims += simulate(pairs, strategies) if pairs else []
        results, returns = results_of(sims)
        rows = results[results["simulator"].isin(tier_sims)]
        if strategies is not None:     # only what this tier was asked to simulate
            asked = {(*k, r) for r, keys in strategies.items() for k in keys}
            rows = rows[[u in asked for u in _units(rows)]]
        if i == 0:
            first = _ranking(rows[rows["simulator"] == tier_sims[-1]])
            n_strategies = int(first["ran"].sum())     # what can be promoted
            if len(tiers) > 1:
                mcs, mcs_record = mcs_units(results, returns)
        next_tier = tiers[i + 1][0] if i + 1 < len(tiers) else None
        d = promote(rows, tier=tier, simulators=tier_sims,
                    previous=None if previous is None else results,
                    previous_simulator=previous, mcs=mcs, n_strategies=n_strategies,
                    settings=settings, next_tier=next_tier)
        decisions.append(d)
        log(d.message)
        previous = d.ranked_by
        if next_tier is None:
            break
        strategies = {}
        for unit in d.promoted:
            strategies.setdefault(unit[3], []).append(tuple(unit[:3]))
        if not d.promoted:
            log(f"race: nothing promoted out of tier {tier}; the race ends there")
            break
    record = {"settings": settings.to_dict(), "tiers": [d.to_dict() for d in decisions],
              "mcs": mcs_record, "n_strategies": n_strategies,
              "cap": settings.cap_count(n_strategies) if n_strategies else 0}
    return sims, decisions, record


def run_stage2_race(dataset, cube, config, settings: RaceSettings | None = None, *,
                    tiers: list[tuple[str, tuple[str, ...]]] | None = None,
                    log: Callable[[str], None] = lambda line: None
                    ) -> tuple[list, list[TierDecision], dict[str, Any]]:
    """Notebook entry point (stage2.run_stage2 with racing): every tier in this process.
    Returns (simulations, benchmark included; tier decisions; manifest record)."""
    from .stage2 import benchmark_simulations, ok_strategies, results_frame, simulate_pair
    settings = settings or RaceSettings()
    every = ok_strategies(cube)

    def simulate(pairs, strategies):
        out = []
        for rebalance, simulator in pairs:
            keys = every if strategies is None else sorted(strategies[rebalance])
            out.append(simulate_pair(dataset.returns, dataset.dates, cube, keys,
                                     rebalance=rebalance, simulator=simulator, config=config))
        return out

    sims, decisions, record = run_race(
        simulate, config=config, settings=settings, tiers=tiers, log=log,
        results_of=lambda s: results_frame(s, cube, dataset, config))
    sims.extend(benchmark_simulations(dataset, cube, config, config.rebalances))
    return sims, decisions, record
