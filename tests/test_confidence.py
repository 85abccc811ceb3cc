"""Model confidence set, SPA and StepM columns (tournament.confidence; no Prefect/Ray).

Planted data: one strategy with a real edge among noise is alone in the 95% MCS and the only
one StepM flags; on pure noise the SPA p-value is above 0.1 for at least 80 of 100 seeds.
Agreement with `arch` uses the data design of arch's documented multiple-comparison example
(examples/multiple-comparison_examples.ipynb: factors, noisy regressors, OLS on the first
half, squared-error losses on the second), seeded as the docs seed it.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tournament.confidence import (CONFIDENCE_COLUMNS, DEFAULT_SETTINGS, BootstrapSettings,
                                   add_confidence_columns, confidence_sentence,
                                   confidence_summary, confidence_table, model_confidence_set,
                                   superior_to_benchmark)
from tournament.strategy_paths import reference_simulator, strategy_paths

KEYS5 = ["selection", "engine", "profile", "rebalance", "simulator"]
FAST = BootstrapSettings(reps=300)


# ----------------------------------------------------------------------------- helpers
def make_frames(series: dict[tuple, np.ndarray], status: dict[tuple, str] | None = None):
    """results/returns frames from {(selection, engine, profile, rebalance, simulator): r}."""
    n_days = len(next(iter(series.values())))
    dates = pd.bdate_range("2022-01-03", periods=n_days)
    rows, parts = [], []
    for key, r in series.items():
        st = (status or {}).get(key, "ok")
        rows.append({**dict(zip(KEYS5, key)), "status": st, "reason": "",
                     "sharpe": r.mean() / r.std(ddof=1) * math.sqrt(252)})
        if st == "ok":
            parts.append(pd.DataFrame({"date": dates, **dict(zip(KEYS5, key)),
                                       "net_return": r}))
    return pd.DataFrame(rows), pd.concat(parts, ignore_index=True)


def planted_market(seed: int, n_noise: int, days: int, edge: float):
    """A common market factor; n_noise strategies and the baseline with the same mean, one
    strategy ("edge") with `edge` more mean return per day."""
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0003, 0.01, days)
    noise = 0.8 * market[:, None] + rng.normal(0, 0.006, (days, n_noise + 2))
    noise[:, -1] += edge
    return noise[:, 0], noise[:, 1:-1], noise[:, -1]   # baseline, noise, edge


def documented_example(k: int = 50):
    """arch's documented SPA example data (t = 1000, 3 factors, beta (1, .5, .1), models
    fitted by OLS on the first 500 observations on factors + unit noise, squared-error loss
    on the last 500), seeded like the current docs (default_rng(23456))."""
    gen = np.random.default_rng(23456)
    t = 1000
    factors = gen.standard_normal((t, 3))
    y = factors @ np.array([1, 0.5, 0.1])

    def losses(noisy):
        beta = np.linalg.lstsq(noisy[:500], y[:500], rcond=None)[0]
        return (y[500:] - noisy[500:] @ beta) ** 2

    bm_losses = losses(factors + gen.standard_normal((t, 3)))
    model_losses = np.column_stack([losses(factors + gen.standard_normal((t, 3)))
                                    for _ in range(k)])
    seed = int(gen.integers(0, 2**31 - 1))
    return bm_losses, model_losses, seed


# ----------------------------------------------------------------------------- planted data
def test_planted_edge_alone_in_mcs_and_flagged_by_stepm():
    base, noise, edge = planted_market(seed=7, n_noise=20, days=500, edge=0.003)
    series = {("all", "baseline", "equal_weight", "window", "custom"): base,
              ("all", "custom", "edge", "window", "custom"): edge}
    for i in range(noise.shape[1]):
        series[("momentum", "custom", f"noise{i}", "window", "custom")] = noise[:, i]
    results, returns = make_frames(series)
    res = confidence_table(results, returns)
    table = res.table.set_index("profile")
    assert res.simulator == "custom" and res.n_obs == 500
    assert table["mcs"].sum() == 1 and bool(table.loc["edge", "mcs"])
    assert table.loc["edge", "mcs_pvalue"] == 1.0
    assert table.drop(index="edge")["mcs_pvalue"].max() <= DEFAULT_SETTINGS.mcs_size
    assert table["stepm"].sum() == 1 and bool(table.loc["edge", "stepm"])
    assert pd.isna(table.loc["equal_weight", "stepm"])          # the baseline itself
    assert res.spa_pvalues["window"] == pytest.approx(0.0, abs=0.01)
    assert (table["spa_pvalue"] == res.spa_pvalues["window"]).all()
    summary = confidence_summary(table.reset_index())
    assert summary["n_in_mcs"] == 1 and summary["n_stepm"] == 1
    assert summary["in_mcs"] == [("all/custom/edge/window", 1.0)]
    assert summary["stepm"] == ["all/custom/edge/window"]


def test_pure_noise_spa_pvalue_above_010_for_80_of_100_seeds():
    settings = BootstrapSettings(reps=200, block_size=5)
    pvalues, any_flag = [], 0
    for seed in range(100):
        base, noise, _ = planted_market(seed=seed, n_noise=8, days=250, edge=0.0)
        p, superior = superior_to_benchmark(base, noise, settings)
        pvalues.append(p)
        any_flag += bool(superior.any())
    pvalues = np.array(pvalues)
    assert np.all((pvalues >= 0) & (pvalues <= 1))
    assert (pvalues > 0.1).sum() >= 80            # measured: 89
    assert any_flag <= 10                         # StepM's family-wise errors, measured: 7


# ----------------------------------------------------------------------------- vs arch
def test_spa_and_stepm_agree_with_arch_on_documented_example():
    from arch.bootstrap import SPA, StepM
    bm_losses, model_losses, seed = documented_example()
    # Make a tenth of the models genuinely better so StepM has something to find.
    model_losses = model_losses.copy()
    model_losses[:, :5] -= 0.5 * model_losses.std()
    settings = BootstrapSettings(reps=500, block_size=12, seed=seed)
    p, superior = superior_to_benchmark(-bm_losses, -model_losses, settings)

    spa = SPA(bm_losses, model_losses, block_size=12, reps=500, seed=seed)
    spa.compute()
    assert p == spa.pvalues["consistent"]
    # The docs: "It should always be the case that lower <= consistent <= upper".
    assert spa.pvalues["lower"] <= p <= spa.pvalues["upper"]
    stepm = StepM(bm_losses, model_losses, size=0.05, block_size=12, reps=500, seed=seed)
    stepm.compute()
    assert np.flatnonzero(superior).tolist() == sorted(stepm.superior_models)
    assert set(range(5)) <= set(np.flatnonzero(superior))


def test_mcs_agrees_with_arch_on_documented_example_and_merges_duplicates():
    from arch.bootstrap import MCS
    _, model_losses, seed = documented_example()
    losses = model_losses[:, ::2]                 # the docs use every 20th of 500 models: 25
    settings = BootstrapSettings(mcs_size=0.10, reps=500, block_size=12, seed=seed)
    in_set, pvalue = model_confidence_set(-losses, settings)

    mcs = MCS(losses, size=0.10, reps=500, block_size=12, seed=seed)
    mcs.compute()
    expected = mcs.pvalues["Pvalue"].sort_index().to_numpy()
    np.testing.assert_array_equal(pvalue, expected)
    # The docs: models with a p-value above the size are in the MCS.
    assert np.flatnonzero(in_set).tolist() == sorted(mcs.included)
    assert 0 < in_set.sum() < losses.shape[1]

    # An exact copy of a model is the same model: it enters once and shares its result.
    with_copy = np.column_stack([losses, losses[:, 3]])
    in_copy, p_copy = model_confidence_set(-with_copy, settings)
    np.testing.assert_array_equal(p_copy[:-1], pvalue)
    assert p_copy[-1] == pvalue[3] and in_copy[-1] == in_set[3]


# ----------------------------------------------------------------------------- tournament wiring
def test_columns_join_every_simulator_row_and_skip_benchmark_and_failed():
    base, noise, edge = planted_market(seed=11, n_noise=4, days=300, edge=0.004)
    series, status = {}, {}
    for sim in ("custom", "vectorbt"):
        for reb in ("window", "daily"):
            series[("all", "baseline", "equal_weight", reb, sim)] = base
            series[("all", "custom", "max_sharpe", reb, sim)] = edge
            for i in range(noise.shape[1]):
                series[("low_vol", "skfolio", f"p{i}", reb, sim)] = noise[:, i]
    series[("benchmark", "baseline", "buy_and_hold", "window", "custom")] = noise[:, 0]
    series[("momentum", "custom", "hrp", "window", "custom")] = noise[:, 1]
    status[("momentum", "custom", "hrp", "window", "custom")] = "unsupported"
    results, returns = make_frames(series, status)

    out, manifest = add_confidence_columns(results, returns, settings=FAST)
    assert list(out.columns[-4:]) == list(CONFIDENCE_COLUMNS)
    assert str(out["mcs"].dtype) == "boolean" and str(out["stepm"].dtype) == "boolean"
    skip = (out["selection"] == "benchmark") | (out["status"] != "ok")
    assert out.loc[skip, ["mcs", "mcs_pvalue", "spa_pvalue", "stepm"]].isna().all().all()
    strat = out[~skip]
    assert strat["mcs"].notna().all() and strat["spa_pvalue"].notna().all()
    # The same values on both simulators' rows of a strategy.
    per = strat.groupby(["selection", "engine", "profile", "rebalance"])
    assert (per["mcs_pvalue"].nunique() == 1).all() and (per["simulator"].nunique() == 2).all()
    # Both rebalance modes' copies of the edge strategy are identical paths: both in the set.
    edge_rows = strat[strat["profile"] == "max_sharpe"]
    assert edge_rows["mcs"].all() and edge_rows["stepm"].all()
    assert not strat[strat["profile"].str.startswith("p")]["mcs"].any()
    assert manifest["simulator"] == "custom" and manifest["n_obs"] == 300
    assert manifest["n_strategies"] == 12 and manifest["n_in_mcs"] == 2
    assert manifest["n_stepm"] == 2 and manifest["reps"] == 300
    assert {"block_size", "seed", "bootstrap", "mcs_size", "loss", "arch"} <= set(manifest)
    assert set(manifest["spa_pvalues"]) == {"window", "daily"}
    # Idempotent: rerunning on its own output replaces the columns, same values.
    again, _ = add_confidence_columns(out, returns, settings=FAST)
    pd.testing.assert_frame_equal(again, out)


def test_reference_simulator_is_lowest_fidelity_that_ran_everything():
    r = np.random.default_rng(0).normal(0, 0.01, (60, 3))
    series = {}
    for sim in ("custom", "vectorbt", "nautilus"):
        for j, prof in enumerate(("a", "b", "c")):
            series[("all", "custom", prof, "window", sim)] = r[:, j]
    # custom failed on strategy c: vectorbt is the lowest simulator that ran all three.
    results, returns = make_frames(series, {("all", "custom", "c", "window", "custom"): "failed"})
    assert reference_simulator(results) == "vectorbt"
    paths = strategy_paths(results, returns)
    assert paths.simulator == "vectorbt" and paths.returns.shape == (60, 3)
    assert paths.labels == ["all/custom/a/window", "all/custom/b/window", "all/custom/c/window"]
    np.testing.assert_array_equal(paths.returns, r)
    assert paths.missing.empty
    # Nobody ran everything: the one that ran most, lowest fidelity first; the rest is listed.
    results.loc[(results["profile"] == "c"), "status"] = "failed"
    results.loc[(results["profile"] == "c") & (results["simulator"] == "nautilus"), "status"] = "ok"
    results.loc[(results["profile"] == "b") & (results["simulator"] == "nautilus"), "status"] = "failed"
    assert reference_simulator(results) == "custom"
    paths = strategy_paths(results, returns)
    assert paths.missing["profile"].tolist() == ["c"]
    res = confidence_table(results, returns, settings=FAST, paths=paths)
    assert any("did not run ok under custom" in note for note in res.notes)
    assert reference_simulator(results.iloc[0:0]) is None


def test_sentence_and_small_cases():
    assert confidence_sentence(3, 0) == ("3 strategies are statistically indistinguishable "
                                         "from the best; 0 beat equal weight after correcting "
                                         "for the search.")
    assert confidence_sentence(1, 1).startswith("1 strategy is") and "1 beats" in \
        confidence_sentence(1, 1)
    # One distinct path: it is the set.
    x = np.random.default_rng(1).normal(0, 0.01, (40, 1))
    in_set, p = model_confidence_set(np.column_stack([x, x]))
    assert in_set.tolist() == [True, True] and p.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="finite"):
        model_confidence_set(np.array([[0.0, np.nan], [0.1, 0.2]]))
    p, sup = superior_to_benchmark(x[:, 0], np.zeros((40, 0)))
    assert math.isnan(p) and sup.size == 0
    assert confidence_summary(pd.DataFrame())["available"] is False
    # Nothing ran: no columns to fill, no error. Only the baseline ran: it is the set alone,
    # and there is nothing to test against it (said in the notes).
    empty, manifest = add_confidence_columns(pd.DataFrame(), pd.DataFrame(), settings=FAST)
    assert list(empty.columns) == list(CONFIDENCE_COLUMNS) and manifest["n_strategies"] == 0
    results, returns = make_frames({("all", "baseline", "equal_weight", "window", "custom"):
                                    x[:, 0]})
    alone, manifest = add_confidence_columns(results, returns, settings=FAST)
    assert bool(alone["mcs"].iloc[0]) and alone["mcs_pvalue"].iloc[0] == 1.0
    assert pd.isna(alone["spa_pvalue"].iloc[0]) and pd.isna(alone["stepm"].iloc[0])
    assert manifest["spa_pvalues"] == {"window": None} and "no SPA" in manifest["notes"][0]


def test_module_does_not_import_orchestration():
    code = ("import sys, tournament.confidence, tournament.strategy_paths; "
            "bad = [m for m in ('prefect', 'ray') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
