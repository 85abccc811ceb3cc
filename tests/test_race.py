"""Multi-fidelity racing (tournament/race.py): tiers, promotion, the rank-agreement check
with a toy simulator that disagrees on purpose, statistics on the complete cheap tier, and
honest Stage 2 cache keys for strategy subsets. No Prefect, no Ray."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from tournament import registry, stage2
from tournament.race import (RaceSettings, RaceStopped, annotate, promote, race_tiers,
                             run_stage2_race)
from tournament.simulators.base import Paths
from tournament.simulators.custom import CustomSimulator


# ------------------------------------------------------------------ toy simulators
class ReversingSimulator(CustomSimulator):
    """Disagrees on purpose: every path's daily returns negated (Sharpe ranking reversed)."""
    name = "toy_reverse"

    def simulate(self, market, orders):
        paths = super().simulate(market, orders)
        return Paths(net_returns=-paths.net_returns, turnover=paths.turnover, costs=paths.costs)


class CloneSimulator(CustomSimulator):
    """Agrees: the custom kernel under another name."""
    name = "toy_clone"


@pytest.fixture
def toys(monkeypatch):
    for cls in (ReversingSimulator, CloneSimulator):
        monkeypatch.setitem(registry.SIMULATORS, cls.name, f"{__name__}:{cls.__name__}")
    monkeypatch.setattr(stage2, "_SIMULATORS", {})     # instances from the registry above


@pytest.fixture(scope="module")
def small(sp500):
    """A small grid on the bundled data: 2 selections x custom x 4 profiles (+ baseline),
    2 rebalance modes."""
    from tournament.config import load_config
    from tournament.stage1 import run_stage1
    config = load_config(selections=["all", "momentum"], engines=["custom"],
                         profiles=["equal_weight", "min_variance", "max_sharpe", "risk_parity"],
                         rebalances=["window", "tolerance"])
    return sp500, run_stage1(sp500, config), config


# ------------------------------------------------------------------ tiers
def test_tiers_follow_the_fidelity_table_and_unknown_simulators_go_last():
    assert race_tiers(["custom", "vectorbt", "cvxportfolio", "nautilus"]) == [
        ("low", ("custom",)), ("medium", ("vectorbt",)), ("high", ("cvxportfolio", "nautilus"))]
    assert race_tiers(["nautilus", "custom"]) == [("low", ("custom",)), ("high", ("nautilus",))]
    assert race_tiers(["custom", "zz", "aa"]) == [("low", ("custom",)), ("aa", ("aa",)),
                                                  ("zz", ("zz",))]


def test_settings_are_validated():
    assert RaceSettings().cap_count(306) == 76           # floor(0.25 x 306)
    assert RaceSettings(cap=0.01).cap_count(20) == 1     # at least one
    for bad in ({"top_k": 0}, {"cap": 0}, {"cap": 1.5}, {"min_tau": 2},
                {"on_disagreement": "ignore"}):
        with pytest.raises(ValueError):
            RaceSettings(**bad)
    with pytest.raises(ValueError, match="unknown setting"):
        RaceSettings.from_dict({"topk": 3})


# ------------------------------------------------------------------ promotion, constructed
def _rows(sharpes, simulator, *, status=None):
    n = len(sharpes)
    return pd.DataFrame({"selection": ["all"] * n, "engine": ["custom"] * n,
                         "profile": [f"p{i:02d}" for i in range(n)],
                         "rebalance": ["window"] * n, "simulator": [simulator] * n,
                         "status": status or ["ok"] * n, "reason": [""] * n,
                         "sharpe": np.asarray(sharpes, dtype=float)})


def test_top_k_plus_confidence_set_capped_best_first():
    sharpes = np.linspace(2.0, 0.1, 20)            # p00 best ... p19 worst
    rows = _rows(sharpes, "custom")
    mcs = {("all", "custom", f"p{i:02d}", "window") for i in (1, 4, 6, 15)}
    d = promote(rows, tier="low", simulators=("custom",), previous=None,
                previous_simulator=None, mcs=mcs, n_strategies=20,
                settings=RaceSettings(top_k=3, cap=0.25), next_tier="medium")
    # top 3 = p00..p02; confidence set adds p04, p06, p15 -> set of 6, cap 5 = 0.25 x 20.
    assert (d.set_size, d.cap, d.n_mcs) == (6, 5, 4)
    assert [u[2] for u in d.promoted] == ["p00", "p01", "p02", "p04", "p06"]
    assert d.tau is None and d.action == "rank"
    assert d.reasons[("all", "custom", "p04", "window")].startswith(
        "promoted to medium: rank 5/20 by custom Sharpe, in the model confidence set")
    assert "over the cap (5 = 0.25 x 20" in d.reasons[("all", "custom", "p15", "window")]
    assert d.reasons[("all", "custom", "p10", "window")] == (
        "not promoted: rank 11/20 by custom Sharpe, not top 3, not in the model confidence set")
    assert "top 3 or in the confidence set (4): 6, cap 5" in d.message


def test_failed_rows_are_never_promoted_and_say_why():
    rows = _rows([1.0, 3.0, 2.0], "custom", status=["ok", "failed", "ok"])
    rows.loc[1, "reason"] = "boom"
    d = promote(rows, tier="low", simulators=("custom",), previous=None,
                previous_simulator=None, mcs=set(), n_strategies=3,
                settings=RaceSettings(top_k=1, cap=1.0), next_tier="high")
    assert [u[2] for u in d.promoted] == ["p02"]
    assert d.reasons[("all", "custom", "p01", "window")] == (
        "not promoted: not ok under custom (boom)")


def test_an_unreliable_tier_widens_or_stops_never_ranks():
    cheap = _rows(np.linspace(2.0, 0.1, 8), "custom")
    reversed_ = _rows(np.linspace(0.1, 2.0, 8), "toy")         # exactly the opposite order
    both = pd.concat([cheap, reversed_], ignore_index=True)
    kw = dict(tier="toy", simulators=("toy",), previous=both, previous_simulator="custom",
              mcs=set(), n_strategies=32, next_tier="high")
    d = promote(reversed_, settings=RaceSettings(top_k=2, min_tau=0.5), **kw)
    assert d.tau == pytest.approx(-1.0, abs=1e-12) and d.n_compared == 8
    assert (d.reliable, d.action, len(d.promoted)) == (False, "widen", 8)
    assert "UNRELIABLE (Kendall tau -1.000 vs custom on 8 strategies (threshold 0.5))" in d.message
    assert all("without ranking" in r for r in d.reasons.values())
    with pytest.raises(RaceStopped, match=r"race stopped at tier toy.*Kendall tau -1\.000"):
        promote(reversed_, settings=RaceSettings(on_disagreement="stop"), **kw)
    # Agreeing tiers: tau 1, ranked as usual.
    same = _rows(np.linspace(2.0, 0.1, 8) * 1.01, "toy")
    d = promote(same, settings=RaceSettings(top_k=2, cap=1.0), **{**kw, "previous": pd.concat(
        [cheap, same], ignore_index=True)})
    assert d.tau == pytest.approx(1.0, abs=1e-12) and d.action == "rank"
    assert [u[2] for u in d.promoted] == ["p00", "p01"]


# ------------------------------------------------------------------ toy simulators, end to end
TOY_TIERS = [("low", ("custom",)), ("toy", ("toy_reverse",)), ("final", ("toy_clone",))]


def test_toy_simulator_that_disagrees_is_caught(small, toys):
    dataset, cube, config = small
    config = dataclasses.replace(config, simulator_list=("custom", "toy_reverse", "toy_clone"))
    settings = RaceSettings(top_k=3, cap=0.5, min_tau=0.5)
    sims, decisions, record = run_stage2_race(dataset, cube, config, settings, tiers=TOY_TIERS)
    low, toy, final = decisions
    n = low.n_strategies
    assert n == 2 * 5 * 2 - 2     # (2 selections x 4 profiles + all/baseline) x 2 modes = 18
    assert low.action == "rank" and len(low.promoted) == min(low.set_size, low.cap)
    assert low.cap == 9
    # The toy tier ran exactly what was promoted, and ranks it backwards.
    ran_toy = {(*s.keys[i], s.rebalance) for s in sims if s.simulator == "toy_reverse"
               for i in range(len(s.keys))}
    assert ran_toy == set(low.promoted)
    assert toy.tau < -0.9 and not toy.reliable and toy.action == "widen"
    assert set(toy.promoted) == set(low.promoted)           # nothing ranked from it
    ran_final = {(*s.keys[i], s.rebalance) for s in sims if s.simulator == "toy_clone"
                 for i in range(len(s.keys))}
    assert ran_final == set(toy.promoted)
    assert final.action == "last" and final.tau < -0.9       # and it says so
    assert "disagrees" in final.message
    assert record["cap"] == 9 and record["tiers"][1]["action"] == "widen"

    with pytest.raises(RaceStopped, match="race stopped at tier toy"):
        run_stage2_race(dataset, cube, config, dataclasses.replace(
            settings, on_disagreement="stop"), tiers=TOY_TIERS)


def test_agreeing_toy_tier_promotes_top_k_and_confidence_set(small, toys):
    dataset, cube, config = small
    config = dataclasses.replace(config, simulator_list=("custom", "toy_clone"))
    tiers = [("low", ("custom",)), ("final", ("toy_clone",))]
    settings = RaceSettings(top_k=2, cap=0.25)
    sims, (low, final), record = run_stage2_race(dataset, cube, config, settings, tiers=tiers)
    assert low.cap == 4                                     # floor(0.25 x 18)
    assert final.tau == pytest.approx(1.0, abs=1e-12) and final.n_compared == len(low.promoted)
    # Ranked by custom's Sharpe: the promoted are the best ranks within the set.
    results, _ = stage2.results_frame(sims, cube, dataset, config)
    custom = results[(results["simulator"] == "custom") & (results["selection"] != "benchmark")]
    best = custom.sort_values("sharpe", ascending=False).head(2)
    top2 = {(*r[:3], r[3]) for r in best[["selection", "engine", "profile", "rebalance"]]
            .itertuples(index=False)}
    assert top2 <= set(low.promoted)
    assert len(low.promoted) == min(low.set_size, 4)
    assert record["mcs"]["simulator"] == "custom" and record["mcs"]["n_strategies"] == 18


def test_statistics_stay_on_the_complete_cheap_tier(small, toys):
    from tournament.outputs import compute_statistics
    dataset, cube, config = small
    config = dataclasses.replace(config, simulator_list=("custom", "toy_clone"))
    tiers = [("low", ("custom",)), ("final", ("toy_clone",))]
    sims, decisions, _ = run_stage2_race(dataset, cube, config, RaceSettings(top_k=2, cap=0.25),
                                         tiers=tiers)
    results, returns = stage2.results_frame(sims, cube, dataset, config)
    results = annotate(results, decisions)
    stats, confidence = compute_statistics(results, returns, periods=config.annualization)
    trials = stats[(stats["status"] == "ok") & (stats["selection"] != "benchmark")]
    clone = trials[trials["simulator"] == "toy_clone"]
    custom = trials[trials["simulator"] == "custom"]
    assert len(clone) == 4 and len(custom) == 18
    assert set(trials["n_trials"]) == {18.0}                 # every trial counted
    assert set(trials["stats_simulator"]) == {"custom"}
    assert confidence["simulator"] == "custom" and confidence["n_strategies"] == 18
    # PBO of the finalists' simulator = the complete matrix's.
    assert np.allclose(clone["pbo"].to_numpy(float), custom["pbo"].iloc[0], equal_nan=True)
    # A finalist's DSR and confidence columns are its cheap-tier values.
    keys = ["selection", "engine", "profile", "rebalance"]
    joined = clone.merge(custom, on=keys, suffixes=("", "_c"))
    assert np.allclose(joined["dsr"], joined["dsr_c"], atol=0, equal_nan=True)
    assert (joined["mcs"].astype(object) == joined["mcs_c"].astype(object)).all()
    # Every row says which tier produced it and why it was or was not promoted.
    assert set(stats["race_tier"]) == {"low", "final"}
    low_rows = stats[(stats["simulator"] == "custom") & (stats["selection"] != "benchmark")]
    assert int(low_rows["race_promoted"].sum()) == 4
    assert low_rows["race_reason"].str.match(r"(promoted to final|not promoted): ").all()
    assert stats.loc[stats["simulator"] == "toy_clone", "race_promoted"].isna().all()
    assert stats.loc[stats["simulator"] == "toy_clone", "race_reason"].str.startswith(
        "final tier: rank").all()


# ------------------------------------------------------------------ cache keys of subsets
def test_a_strategy_subset_never_shares_a_full_chunks_cache_key(small):
    from flows.plan import stage2_plan
    dataset, cube, config = small
    every = stage2.ok_strategies(cube)
    full = stage2_plan(config, dataset, cube, every, [("window", "nautilus")])
    subset = [k for k in every if k[2] != "min_variance"]
    part = stage2_plan(config, dataset, cube, subset, [("window", "nautilus")])
    by_key = {c.key: c.members for c in full}
    for c in part:
        # Same key only for the same members (then the same computation); else a new key.
        assert by_key.get(c.key, c.members) == c.members
    assert {c.key for c in part} - set(by_key)                  # some chunks are new
