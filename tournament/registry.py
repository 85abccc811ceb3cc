"""Name -> implementation registries, resolved lazily.

Registries map names to "module:attribute" strings so that listing or validating names
never imports a heavy library (skfolio, cvxportfolio, vectorbt, nautilus). Adding an engine
or simulator is one new file plus one line here.
"""
from __future__ import annotations

import importlib

from .errors import ConfigError, unknown_name

SELECTIONS = ("all", "momentum", "low_vol", "cluster")

PROFILES = ("equal_weight", "min_variance", "max_sharpe", "risk_parity", "hrp")

ENGINES: dict[str, str] = {}        # name -> "module:Class"
SIMULATORS: dict[str, str] = {}

def register(kind: str, name: str, target: str) -> None:
    """Add an engine or simulator: `target` is "module:Class" (imported only when used).
    Re-registering a name to another target is an error, never a silent swap."""
    table = {"engine": ENGINES, "simulator": SIMULATORS}.get(kind)
    if table is None:
        raise ConfigError(unknown_name("registry kind", kind, ("engine", "simulator")))
    if ":" not in target:
        raise ConfigError(f"register({kind!r}, {name!r}): target must be 'module:Class', "
                          f"got {target!r}")
    if table.get(name, target) != target:
        raise ConfigError(f"{kind} {name!r} is already registered as {table[name]}")
    table[name] = target



# ------------------------------------------------------------------ the registry lines
# A new engine or simulator: its file, plus one line here (a plug-in outside this package
# makes the same call before it builds its config).
register("engine", "custom", "tournament.engines.custom:CustomEngine")
register("engine", "skfolio", "tournament.engines.skfolio_engine:SkfolioEngine")
register("engine", "cvxportfolio", "tournament.engines.cvxportfolio_engine:CvxportfolioEngine")
# Always-present baseline (raw-pool equal weight); not a user-selectable engine.
register("engine", "baseline", "tournament.engines.baseline:BaselineEngine")

register("simulator", "custom", "tournament.simulators.custom:CustomSimulator")
register("simulator", "vectorbt", "tournament.simulators.vectorbt_sim:VectorbtSimulator")
register("simulator", "cvxportfolio",
         "tournament.simulators.cvxportfolio_sim:CvxportfolioSimulator")
register("simulator", "nautilus", "tournament.simulators.nautilus_sim:NautilusSimulator")

# The built-in names, fixed at import (the typed UI's choices); validation reads the live
# tables through registered_names(), so a registered plug-in is a valid name.
USER_ENGINES = tuple(name for name in ENGINES if name != "baseline")

FIDELITY_TIERS = {
    "low": ("custom",),
    "medium": ("custom", "vectorbt"),
    "high": ("custom", "vectorbt", "cvxportfolio", "nautilus"),
}

REBALANCE_MODES = ("window", "daily", "tolerance")


def _load(target: str):
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


def get_engine(name: str):
    """Return an engine instance by name; unknown names list the valid ones."""
    if name not in ENGINES:
        raise ConfigError(unknown_name("engine", name, ENGINES))
    return _load(ENGINES[name])()


def get_simulator(name: str):
    """Return a simulator instance by name; unknown names list the valid ones. Under
    TOURNAMENT_FAULTS simulator rules (tests only) it comes wrapped to inject them."""
    if name not in SIMULATORS:
        raise ConfigError(unknown_name("simulator", name, SIMULATORS))
    simulator = _load(SIMULATORS[name])()
    # imported here so that listing names stays import-light
    from .faults import simulator_faults_active, with_simulator_faults
    return with_simulator_faults(simulator) if simulator_faults_active() else simulator


def warm_modules(kind: str, name: str) -> list[str]:
    """What a worker imports to be ready for an engine/simulator: its module and the
    libraries it imports lazily (its class's `warm_imports`). Imports its module, not them."""
    table = {"engine": ENGINES, "simulator": SIMULATORS}[kind]
    return [module_of(kind, name), *_load(table[name]).warm_imports]


def module_of(kind: str, name: str) -> str:
    """Module path implementing an engine/simulator (for code-version digests)."""
    table = {"engine": ENGINES, "simulator": SIMULATORS}[kind]
    return table[name].split(":")[0]


def registered_names(kind: str) -> tuple[str, ...]:
    """The names a config may use now (the baseline engine is not user-selectable)."""
    if kind == "engine":
        return tuple(n for n in ENGINES if n != "baseline")
    return tuple(SIMULATORS)
