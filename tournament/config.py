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

from .config_fields import DATA_KINDS, DEFAULTS, FIELDS_BY_NAME, SECTIONS, ConfigField
from .errors import ConfigError, unknown_name
from .registry import ENGINES, FIDELITY_TIERS, USER_ENGINES


@dataclass(frozen=True)
class WindowSpec:
    """Rolling walk-forward windows, in trading days; `start` (ISO date, "" = the data's first
    day) is the first training day, which anchors the grid."""
    start: str = DEFAULTS["start"]
    train: int = DEFAULTS["train"]
    test: int = DEFAULTS["test"]
    step: int = DEFAULTS["step"]


@dataclass(frozen=True)
class CostModel:
    """Costs in basis points of traded notional, paid from cash at trade time."""
    slippage_bps: float = DEFAULTS["slippage_bps"]
    commission_bps: float = DEFAULTS["commission_bps"]

    @property
    def rate(self) -> float:
        """Cost per unit of traded notional (6 bps -> 0.0006)."""
        return (self.slippage_bps + self.commission_bps) / 1e4


@dataclass(frozen=True)
class TournamentConfig:
    """The defaults and the meaning of each field: tournament.config_fields.FIELDS."""
    windows: WindowSpec = field(default_factory=WindowSpec)
    selections: tuple[str, ...] = DEFAULTS["selections"]
    engines: tuple[str, ...] = DEFAULTS["engines"]
    profiles: tuple[str, ...] = DEFAULTS["profiles"]
    rebalances: tuple[str, ...] = DEFAULTS["rebalances"]
    fidelity: str = DEFAULTS["fidelity"]
    # Explicit simulator list; empty means "the fidelity tier's simulators".
    simulator_list: tuple[str, ...] = DEFAULTS["simulator_list"]
    costs: CostModel = field(default_factory=CostModel)
    max_weight: float = DEFAULTS["max_weight"]
    top_k: int = DEFAULTS["top_k"]
    tolerance: float = DEFAULTS["tolerance"]
    covariance: str = DEFAULTS["covariance"]
    risk_free: float = DEFAULTS["risk_free"]
    annualization: int = DEFAULTS["annualization"]
    # A window whose cell cannot produce valid weights: "hold" (previous target; cash in a
    # strategy's first window), "cash", or "fail" (the strategy fails). See README.
    on_infeasible: str = DEFAULTS["on_infeasible"]

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
def load_config(path: str | Path | None = None, **overrides: Any) -> TournamentConfig:
    """Read a TOML config (optional) and apply overrides (flat field names, None = unset).

    Raises ConfigError naming the file, the key and the problem.
    """
    source = str(path) if path else "<defaults>"
    flat: dict[str, Any] = {}
    if path is not None:
        flat.update(_read_toml(Path(path), source))
    flat.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(flat, source=source)


def config_from_dict(config: dict[str, Any], *, source: str = "<config dict>"
                     ) -> TournamentConfig:
    """The config `TournamentConfig.to_dict()` (and so every manifest) records, rebuilt and
    validated (ConfigError naming `source` and the field)."""
    flat = {k: v for k, v in config.items() if k not in ("windows", "costs", "simulators")}
    flat.update(config.get("windows") or {})
    flat.update(config.get("costs") or {})
    return build_config(flat, source=source)


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    """A TOML config file as flat field names -> values (not yet validated)."""
    def fail(problem: str):
        raise ConfigError(f"config error in {source}: {problem}")

    if not path.is_file():
        fail("file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        fail(f"not valid TOML ({exc})")
    flat: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            fail(unknown_name("section", f"[{section}]", [f"[{s}]" for s in SECTIONS]))
        if not isinstance(values, dict):
            fail(f"[{section}] must be a table")
        for key, value in values.items():
            if key not in SECTIONS[section]:
                fail(unknown_name(f"key in [{section}]", key, SECTIONS[section]))
            flat[SECTIONS[section][key].name] = value
    return flat


def build_config(flat: dict[str, Any], *, source: str = "<defaults>") -> TournamentConfig:
    """A TournamentConfig from flat field names -> values; unset fields keep the table's
    defaults. Values are checked against the table and kept as given (an int cost stays an
    int: the config's digest sees what the user wrote)."""
    for name in flat:
        if name not in FIELDS_BY_NAME:
            raise ConfigError(f"config error in {source}: "
                              + unknown_name("field", name, FIELDS_BY_NAME))
    values = {**DEFAULTS, **{name: _checked(FIELDS_BY_NAME[name], value, source)
                             for name, value in flat.items()}}
    windows = WindowSpec(**_take(values, WindowSpec))
    costs = CostModel(**_take(values, CostModel))
    return TournamentConfig(windows=windows, costs=costs, **values)


def _take(values: dict[str, Any], spec) -> dict[str, Any]:
    """Pop the fields of the dataclass `spec` (a group of the config) out of `values`."""
    return {f.name: values.pop(f.name) for f in dataclasses.fields(spec)}


def _checked(spec: ConfigField, value: Any, source: str) -> Any:
    """`value` if it is valid for the field, else ConfigError naming source, key, problem."""
    def fail(problem: str):
        raise ConfigError(f"config error in {source}: {spec.location}: {problem}")

    if spec.kind == "choice":
        if not isinstance(value, str) or value not in spec.choices:
            fail(unknown_name(spec.noun, value, spec.choices))
        return value
    if spec.kind == "date":
        return _checked_date(value, fail)
    if spec.kind == "names":
        if isinstance(value, str):          # the CLI's comma list
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            fail(f"must be a list of names, got {value!r}")
        valid = spec.valid_names
        if not value and not spec.allow_empty:
            fail("must not be empty; valid: " + ", ".join(sorted(valid)))
        for v in value:
            if v not in valid:
                fail(unknown_name(spec.noun, v, valid))
        if len(set(value)) != len(value):
            fail(f"duplicate names in {list(value)}")
        return tuple(value)
    # int / float: bool is an int to Python, never a number here
    is_int = spec.kind == "int"
    if isinstance(value, bool) or not isinstance(value, int if is_int else (int, float)):
        fail(f"must be {'an integer' if is_int else 'a number'}, got {value!r}")
    below = value <= spec.lo if spec.lo_open else value < spec.lo
    if below or (spec.hi is not None and value > spec.hi):
        bound = (f"{'>' if spec.lo_open else '>='} {spec.lo}"
                 + (f" and <= {spec.hi}" if spec.hi is not None else ""))
        fail(f"must be {bound}, got {value!r}")
    return value


def _checked_date(value: Any, fail) -> str:
    """An ISO date as "YYYY-MM-DD" ("" = unset). TOML's own dates are accepted too."""
    import datetime as dt
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str):
        fail(f"must be a date YYYY-MM-DD, got {value!r}")
    if value.strip() == "":
        return ""
    try:
        return dt.date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        fail(f"must be a date YYYY-MM-DD, got {value!r}")


# ---------------------------------------------------------------- names as types (UI, API)
# The flow's own parameters' names as Literal types: the Prefect UI offers them as choices,
# the API validates them. The config fields' types are built from the same table by
# tournament.overrides (pydantic is not imported here: the CLI reads the config before it
# starts anything, import time counts).
Fidelity = Literal[FIELDS_BY_NAME["fidelity"].choices]
DataKind = Literal[DATA_KINDS]


assert set(USER_ENGINES) <= set(ENGINES)
