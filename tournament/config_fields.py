"""The ONE table of the tournament's configuration fields.

Everything that lists the config's fields is derived from `FIELDS`: the validation of
`tournament.config` (TOML sections and keys, types, bounds, names, error messages), the
TournamentConfig defaults, the CLI's flags (flows/cli.py), the typed overrides of the flow
(tournament.overrides.GridOverrides) and the grid block's fields (blocks/tournament_blocks.py).
configs/default.toml spells the same defaults out; tests/unit/test_config_table.py checks it
against this table, and that every surface offers every field (or says here why not).

Imports only the registries (no pydantic, no numpy): the CLI builds its flags from this
before it starts anything, and import time counts there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .registry import FIDELITY_TIERS, PROFILES, REBALANCE_MODES, SELECTIONS, SIMULATORS, USER_ENGINES

KINDS = ("int", "float", "names", "choice", "date")   # names: a list of names; choice: one
# name; date: an ISO date "YYYY-MM-DD" ("" = unset)


@dataclass(frozen=True)
class ConfigField:
    name: str                         # TournamentConfig / load_config(**overrides) name
    section: str                      # the TOML table it sits in
    kind: str                         # one of KINDS
    default: Any
    help: str
    key: str = ""                     # TOML key, CLI flag and UI name; "" = `name`
    lo: float | None = None           # numbers: lower bound, inclusive unless lo_open
    hi: float | None = None           # numbers: upper bound, inclusive
    lo_open: bool = False
    choices: tuple[str, ...] = ()     # names / choice: the valid names
    noun: str = "name"                # what an unknown name is called in an error
    allow_empty: bool = False         # names: the empty list is a value
    registry: str = ""                # "engine" / "simulator": valid names are read from the
                                      # registry when validating (a registered plug-in counts)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"config field {self.name}: unknown kind {self.kind!r}")
        if not self.key:
            object.__setattr__(self, "key", self.name)

    @property
    def valid_names(self) -> tuple[str, ...]:
        """The names a value may take now: the registry's for engines and simulators
        (`choices` is the built-in snapshot the UI's types are made from)."""
        if self.registry:
            from .registry import registered_names
            return registered_names(self.registry)
        return self.choices

    @property
    def location(self) -> str:
        """Where the field sits in a TOML file, as errors name it: `[grid] engines`."""
        return f"[{self.section}] {self.key}"


COVARIANCE_ESTIMATORS = ("ledoit_wolf", "sample")
INFEASIBLE_POLICIES = ("hold", "cash", "fail")

# In the order the UI forms show them (the grid's axes first). configs/default.toml holds
# the same sections; its order is free.
FIELDS: tuple[ConfigField, ...] = (
    ConfigField("selections", "grid", "names", ("all", "momentum", "low_vol"),
                "asset selection modes to run", choices=SELECTIONS),
    ConfigField("engines", "grid", "names", ("custom", "skfolio", "cvxportfolio"),
                "optimisation engines to run", choices=USER_ENGINES,
                registry="engine"),
    ConfigField("profiles", "grid", "names", PROFILES,
                "portfolio profiles (objectives) to run", choices=PROFILES),
    ConfigField("rebalances", "grid", "names", REBALANCE_MODES,
                "rebalance modes to simulate", choices=REBALANCE_MODES),
    ConfigField("fidelity", "grid", "choice", "low",
                "simulator tier: low = custom; medium = + vectorbt; high = + cvxportfolio + "
                "nautilus", choices=tuple(FIDELITY_TIERS), noun="fidelity"),
    ConfigField("simulator_list", "grid", "names", (),
                "explicit simulator list; replaces the fidelity tier's (empty = the tier's)",
                key="simulators", choices=tuple(SIMULATORS), allow_empty=True,
                registry="simulator"),
    ConfigField("start", "windows", "date", "",
                "first training day: anchors the window grid, so appended data only adds "
                "windows (\"\" = the first day of the data; not with --days)"),
    ConfigField("train", "windows", "int", 180, "training window, trading days", lo=2),
    ConfigField("test", "windows", "int", 40, "test window, trading days", lo=1),
    ConfigField("step", "windows", "int", 20, "window step, trading days", lo=1),
    ConfigField("slippage_bps", "costs", "float", 5.0, "slippage, bps of traded notional",
                lo=0, hi=1e4),
    ConfigField("commission_bps", "costs", "float", 1.0, "commission, bps of traded notional",
                lo=0, hi=1e4),
    ConfigField("max_weight", "constraints", "float", 1.0,
                "per-asset weight cap (long-only, fully invested)", lo=0, hi=1, lo_open=True),
    ConfigField("top_k", "selection", "int", 10, "assets kept by momentum / low_vol / cluster",
                lo=1),
    ConfigField("tolerance", "rebalance", "float", 0.05,
                "one-way drift that triggers a trade (tolerance mode)", lo=0, hi=1,
                lo_open=True),
    ConfigField("covariance", "estimation", "choice", "ledoit_wolf",
                "covariance estimator shared by the engines", choices=COVARIANCE_ESTIMATORS,
                noun="covariance estimator"),
    ConfigField("risk_free", "estimation", "float", 0.0, "daily risk-free rate for max_sharpe",
                lo=-1, hi=1),
    ConfigField("annualization", "estimation", "int", 252, "periods per year", lo=1),
    ConfigField("on_infeasible", "solve", "choice", "hold",
                "a window that cannot be solved: hold the previous target (cash in the first "
                "window), hold cash, or fail the strategy", choices=INFEASIBLE_POLICIES,
                noun="on_infeasible policy"),
)
FIELDS_BY_NAME: dict[str, ConfigField] = {f.name: f for f in FIELDS}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in FIELDS}


def _by_section(fields) -> dict[str, dict[str, ConfigField]]:
    sections: dict[str, dict[str, ConfigField]] = {}
    for f in fields:
        sections.setdefault(f.section, {})[f.key] = f
    return sections


SECTIONS = _by_section(FIELDS)      # TOML section -> {key: field}

# Fields a surface does not offer, with the reason (every other field is offered there).
NOT_IN_OVERRIDES = {"fidelity": "a parameter of its own: of the flow, of load_config and the "
                                "CLI (--fidelity), so a deployment can set it on its own"}

# ---------------------------------------------------------------- the data inputs' defaults
# Not config fields (no TOML key), but read beside them by the CLI, the flow and the blocks
# without importing tournament.data (numpy, pandas); tournament.data's table uses them.
DEFAULT_SP500_DAYS = 500              # the bundled sample: the last 500 trading days
DATA_KINDS = ("prices", "returns")    # what a data file holds; the first is the default
