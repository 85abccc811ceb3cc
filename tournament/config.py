"""The tournament spec: grid, windows, costs, caps. Loaded from TOML plus overrides.

Every number the tournament uses comes from here (nothing is hard-coded elsewhere), and every
name is checked against the registries before any compute starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, unknown_name
from .registry import (ENGINES, FIDELITY_TIERS, PROFILES, REBALANCE_MODES, SELECTIONS,
                       SIMULATORS, USER_ENGINES)


@dataclass(frozen=True)
class WindowSpec:
    """Rolling walk-forward windows, in trading days."""
    train: int = 180
    test: int = 40
    step: int = 20


@dataclass(frozen=True)
class CostModel:
    """Costs in basis points of traded notional, paid from cash at trade time."""
    slippage_bps: float = 5.0
    commission_bps: float = 1.0

    @property
    def rate(self) -> float:
        """Cost per unit of traded notional (6 bps -> 0.0006)."""
        return (self.slippage_bps + self.commission_bps) / 1e4


@dataclass(frozen=True)
class TournamentConfig:
    windows: WindowSpec = field(default_factory=WindowSpec)
    selections: tuple[str, ...] = ("all", "momentum", "low_vol")
    engines: tuple[str, ...] = ("custom", "skfolio", "cvxportfolio")
    profiles: tuple[str, ...] = PROFILES
    rebalances: tuple[str, ...] = REBALANCE_MODES
    fidelity: str = "low"
    # Explicit simulator list; empty means "the fidelity tier's simulators".
    simulator_list: tuple[str, ...] = ()
    costs: CostModel = field(default_factory=CostModel)
    max_weight: float = 1.0          # per-asset cap, long-only, fully invested
    top_k: int = 10                  # assets kept by momentum / low_vol / cluster
    tolerance: float = 0.05          # one-way drift that triggers a trade in `tolerance` mode
    covariance: str = "ledoit_wolf"  # covariance estimator shared by the engines
    risk_free: float = 0.0           # daily risk-free rate for max_sharpe
    annualization: int = 252
    # A window whose cell cannot produce valid weights: "hold" (previous target; cash in a
    # strategy's first window), "cash", or "fail" (the strategy fails). See README.
    on_infeasible: str = "hold"

    @property
    def simulators(self) -> tuple[str, ...]:
        return self.simulator_list or FIDELITY_TIERS[self.fidelity]

    # ----- digests: which parts of the config each piece of work depends on -----
    def selection_params(self, selection: str) -> dict[str, Any]:
        return {} if selection == "all" else {"top_k": self.top_k}

    def engine_params(self, profile: str) -> dict[str, Any]:
        params: dict[str, Any] = {"max_weight": self.max_weight, "covariance": self.covariance}
        if profile == "max_sharpe":
            params["risk_free"] = self.risk_free
        return params

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["simulators"] = list(self.simulators)
        return d

    def digest(self) -> str:
        return digest_of(self.to_dict())


def digest_of(obj: Any) -> str:
    """Stable short hash of a JSON-able object (canonical JSON, sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- loading + validation
_SECTIONS: dict[str, dict[str, str]] = {
    # toml section -> {toml key: TournamentConfig field}
    "windows": {"train": "train", "test": "test", "step": "step"},
    "grid": {"selections": "selections", "engines": "engines", "profiles": "profiles",
             "rebalances": "rebalances", "fidelity": "fidelity", "simulators": "simulator_list"},
    "costs": {"slippage_bps": "slippage_bps", "commission_bps": "commission_bps"},
    "constraints": {"max_weight": "max_weight"},
    "selection": {"top_k": "top_k"},
    "rebalance": {"tolerance": "tolerance"},
    "estimation": {"covariance": "covariance", "risk_free": "risk_free",
                   "annualization": "annualization"},
    "solve": {"on_infeasible": "on_infeasible"},
}
COVARIANCE_ESTIMATORS = ("ledoit_wolf", "sample")
INFEASIBLE_POLICIES = ("hold", "cash", "fail")


def load_config(path: str | Path | None = None, **overrides: Any) -> TournamentConfig:
    """Read a TOML config (optional) and apply overrides (flat field names, None = unset).

    Raises ConfigError naming the file, the key and the problem.
    """
    source = str(path) if path else "<defaults>"
    flat: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config error in {source}: file not found")
        try:
            raw = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config error in {source}: not valid TOML ({exc})") from None
        for section, values in raw.items():
            if section not in _SECTIONS:
                raise ConfigError(f"config error in {source}: "
                                  + unknown_name("section", f"[{section}]", [f"[{s}]" for s in _SECTIONS]))
            if not isinstance(values, dict):
                raise ConfigError(f"config error in {source}: [{section}] must be a table")
            for key, value in values.items():
                if key not in _SECTIONS[section]:
                    raise ConfigError(f"config error in {source}: "
                                      + unknown_name(f"key in [{section}]", key, _SECTIONS[section]))
                flat[_SECTIONS[section][key]] = value
    flat.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(flat, source=source)


def _field_location(name: str) -> str:
    for section, keys in _SECTIONS.items():
        for key, field_name in keys.items():
            if field_name == name:
                return f"[{section}] {key}"
    return name


def build_config(flat: dict[str, Any], *, source: str = "<defaults>") -> TournamentConfig:
    def fail(name: str, problem: str):
        raise ConfigError(f"config error in {source}: {_field_location(name)}: {problem}")

    known = {f.name for f in dataclasses.fields(TournamentConfig)} | {
        "train", "test", "step", "slippage_bps", "commission_bps"}
    for name in flat:
        if name not in known:
            raise ConfigError(f"config error in {source}: " + unknown_name("field", name, known))

    def names(name: str, valid, *, allow_empty: bool = False) -> tuple[str, ...] | None:
        if name not in flat:
            return None
        value = flat[name]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            fail(name, f"must be a list of names, got {value!r}")
        if not value and not allow_empty:
            fail(name, "must not be empty; valid: " + ", ".join(sorted(valid)))
        for v in value:
            if v not in valid:
                fail(name, unknown_name("name", v, valid))
        if len(set(value)) != len(value):
            fail(name, f"duplicate names in {list(value)}")
        return tuple(value)

    def number(name: str, kind, lo: float, hi: float | None = None, *, lo_open: bool = False):
        if name not in flat:
            return None
        value = flat[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and not isinstance(value, int)):
            fail(name, f"must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if (value <= lo if lo_open else value < lo) or (hi is not None and value > hi):
            bound = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
            fail(name, f"must be {bound}, got {value!r}")
        return value

    defaults = TournamentConfig()
    windows = WindowSpec(
        train=number("train", int, 2) or defaults.windows.train,
        test=number("test", int, 1) or defaults.windows.test,
        step=number("step", int, 1) or defaults.windows.step)
    costs = CostModel(
        slippage_bps=_pick(number("slippage_bps", float, 0, 1e4), defaults.costs.slippage_bps),
        commission_bps=_pick(number("commission_bps", float, 0, 1e4), defaults.costs.commission_bps))
    fidelity = flat.get("fidelity", defaults.fidelity)
    if fidelity not in FIDELITY_TIERS:
        fail("fidelity", unknown_name("fidelity", fidelity, FIDELITY_TIERS))
    covariance = flat.get("covariance", defaults.covariance)
    if covariance not in COVARIANCE_ESTIMATORS:
        fail("covariance", unknown_name("covariance estimator", covariance, COVARIANCE_ESTIMATORS))
    on_infeasible = flat.get("on_infeasible", defaults.on_infeasible)
    if on_infeasible not in INFEASIBLE_POLICIES:
        fail("on_infeasible", unknown_name("on_infeasible policy", on_infeasible,
                                           INFEASIBLE_POLICIES))
    return TournamentConfig(
        windows=windows,
        selections=_pick(names("selections", SELECTIONS), defaults.selections),
        engines=_pick(names("engines", USER_ENGINES), defaults.engines),
        profiles=_pick(names("profiles", PROFILES), defaults.profiles),
        rebalances=_pick(names("rebalances", REBALANCE_MODES), defaults.rebalances),
        fidelity=fidelity,
        simulator_list=_pick(names("simulator_list", SIMULATORS, allow_empty=True), ()),
        costs=costs,
        max_weight=_pick(number("max_weight", float, 0, 1, lo_open=True), defaults.max_weight),
        top_k=_pick(number("top_k", int, 1), defaults.top_k),
        tolerance=_pick(number("tolerance", float, 0, 1, lo_open=True), defaults.tolerance),
        covariance=covariance,
        risk_free=_pick(number("risk_free", float, -1, 1), defaults.risk_free),
        annualization=_pick(number("annualization", int, 1), defaults.annualization),
        on_infeasible=on_infeasible,
    )


def _pick(value, default):
    return default if value is None else value


# ---------------------------------------------------------------- names as types (UI, API)
# The registries' names as Literal types: the Prefect UI offers them as choices, the API
# validates them, and they cannot drift from the registries (built from the same tuples).
# The pydantic model of the overrides is tournament.overrides.GridOverrides (pydantic is not
# imported here: the CLI reads the config before it starts anything, import time counts).
Fidelity = Literal[tuple(FIDELITY_TIERS)]
DataKind = Literal["prices", "returns"]
SelectionName = Literal[SELECTIONS]
EngineName = Literal[USER_ENGINES]
ProfileName = Literal[PROFILES]
RebalanceName = Literal[REBALANCE_MODES]
SimulatorName = Literal[tuple(SIMULATORS)]
CovarianceName = Literal[COVARIANCE_ESTIMATORS]
InfeasiblePolicy = Literal[INFEASIBLE_POLICIES]


assert set(USER_ENGINES) <= set(ENGINES)
