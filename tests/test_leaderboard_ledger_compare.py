"""Overfitting columns, the audit ledger and run comparison (no Prefect/Ray; ~10 s)."""
from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pandas as pd
import pytest

from tournament import stats
from tournament.overfitting import add_overfitting_columns
from tournament.report import agreement_frame

DAYS = 320
PERIODS = 252


# ----------------------------------------------------------------------------- helpers
def make_frames(series: dict[tuple, np.ndarray], sharpe: dict[tuple, float] | None = None):
    """results/returns frames from {(selection, engine, profile, rebalance, simulator): r}."""
    dates = pd.bdate_range("2021-01-04", periods=len(next(iter(series.values()))))
    rows, parts = [], []
    for key, r in series.items():
        sel, eng, prof, reb, sim = key
        sr = r.mean() / r.std(ddof=1) * math.sqrt(PERIODS)
        w = np.array([seg.mean() / seg.std(ddof=1) * math.sqrt(PERIODS)
                      for seg in np.array_split(r, 8)])
        rows.append({"selection": sel, "engine": eng, "profile": prof, "rebalance": reb,
                     "simulator": sim, "status": "ok", "reason": "",
                     "sharpe": sharpe[key] if sharpe else sr,
                     "final_equity": float(np.prod(1 + r)), "n_days": len(r),
                     "window_sharpe_mean": w.mean(), "window_sharpe_std": w.std(ddof=1)})
        parts.append(pd.DataFrame({"date": dates, "selection": sel, "engine": eng,
                                   "profile": prof, "rebalance": reb, "simulator": sim,
                                   "net_return": r}))
    return pd.DataFrame(rows), pd.concat(parts, ignore_index=True)


def clustered_series(rng, n_clusters=3, per_cluster=4, days=DAYS):
    """n_clusters independent factors, each copied with small noise (near-duplicates)."""
    out = {}
    for c in range(n_clusters):
        base = rng.normal(0.0004 * (c + 1), 0.01, days)
        for k in range(per_cluster):
            out[(f"sel{c}", "custom", f"p{k}", "window", "custom")] = (
                base + rng.normal(0, 0.001, days))
    return out


# ----------------------------------------------------------------------------- leaderboard
def test_dsr_matches_stats_by_hand_and_uses_n():
    rng = np.random.default_rng(1)
    series = clustered_series(rng)
    results, returns = make_frames(series)
    # A non-ok row and a benchmark row: neither is a trial.
    results = pd.concat([results, pd.DataFrame([
        {"selection": "all", "engine": "custom", "profile": "hrp", "rebalance": "window",
         "simulator": "custom", "status": "unsupported", "reason": "no hrp"}])],
        ignore_index=True)
    bench_r, bench_ret = make_frames({("benchmark", "baseline", "buy_and_hold", "window",
                                       "custom"): rng.normal(0, 0.01, DAYS)})
    results = pd.concat([results, bench_r], ignore_index=True)
    returns = pd.concat([returns, bench_ret], ignore_index=True)

    out = add_overfitting_columns(results, returns, periods=PERIODS)
    trials = out[(out["status"] == "ok") & (out["selection"] != "benchmark")]
    n = len(series)
    assert (trials["n_trials"] == n).all()
    n_eff = trials["n_effective_trials"].iloc[0]
    assert 1 <= n_eff <= n and n_eff == 3        # three clusters of near-duplicates
    assert out.loc[out["status"] != "ok", ["dsr", "pbo", "n_trials"]].isna().all().all()
    bench = out[out["selection"] == "benchmark"]
    assert bench["dsr"].isna().all() and bench["temporal_fragility"].notna().all()

    # By hand for one row.
    row = trials.iloc[5]
    key = tuple(row[["selection", "engine", "profile", "rebalance", "simulator"]])
    sr_all = trials["sharpe"].to_numpy() / math.sqrt(PERIODS)
    sr, n_obs, skew, kurt = stats.sharpe_ratio_moments(series[key])
    assert sr == pytest.approx(row["sharpe"] / math.sqrt(PERIODS), rel=1e-12)
    expected, _ = stats.deflated_sharpe_ratio(sharpe=sr, n_obs=n_obs, skew=skew, kurtosis=kurt,
                                              n_trials=n, sharpe_variance=np.var(sr_all, ddof=1))
    assert row["dsr"] == pytest.approx(expected, rel=1e-9)
    expected_eff, _ = stats.deflated_sharpe_ratio(sharpe=sr, n_obs=n_obs, skew=skew,
                                                  kurtosis=kurt, n_trials=n_eff,
                                                  sharpe_variance=np.var(sr_all, ddof=1))
    assert row["dsr_effective"] == pytest.approx(expected_eff, rel=1e-9)
    # Fewer (effective) trials, same variance -> less deflation: more trials, lower DSR.
    assert (trials["dsr_effective"] > trials["dsr"]).all()


def test_pbo_in_unit_interval_and_one_per_simulator():
    rng = np.random.default_rng(2)
    series = {}
    for i in range(6):
        for sim in ("custom", "vectorbt"):
            for reb in ("window", "daily"):
                series[(f"s{i}", "custom", "p", reb, sim)] = rng.normal(0.0003, 0.01, DAYS)
    results, returns = make_frames(series)
    out = add_overfitting_columns(results, returns, periods=PERIODS)
    per_sim = out.groupby("simulator")["pbo"].agg(["min", "max"])
    assert (per_sim["min"] == per_sim["max"]).all()
    assert ((out["pbo"] >= 0) & (out["pbo"] <= 1)).all()
    # The custom value is CSCV over exactly custom's 12 (strategy x rebalance) columns.
    custom = out[out["simulator"] == "custom"]
    mat = np.column_stack([series[tuple(r)] for r in
                           custom[["selection", "engine", "profile", "rebalance",
                                   "simulator"]].itertuples(index=False)])
    expected = stats.probability_of_backtest_overfitting(mat, n_splits=16).pbo
    assert custom["pbo"].iloc[0] == pytest.approx(expected)


def test_simulator_sharpe_gap_and_kendall_tau_constructed():
    rng = np.random.default_rng(3)
    sharpe_custom = {"a": 1.0, "b": 0.5, "c": 2.0, "d": -0.4}
    series, sharpe = {}, {}
    for sel, s in sharpe_custom.items():
        for reb, factor in (("window", 0.8), ("daily", None)):
            for sim in ("custom", "vectorbt"):
                key = (sel, "custom", "p", reb, sim)
                series[key] = rng.normal(0, 0.01, DAYS)
                if sim == "custom":
                    sharpe[key] = s
                elif factor is not None:        # same ranking, scaled down
                    sharpe[key] = s * factor
                else:                           # reversed ranking
                    sharpe[key] = -s
    results, returns = make_frames(series, sharpe)
    out = add_overfitting_columns(results, returns, periods=PERIODS).set_index(
        ["selection", "rebalance", "simulator"])
    for sel, s in sharpe_custom.items():
        expected_w = 1 - (s * 0.8) / s
        expected_d = 1 - (-s) / s
        for sim in ("custom", "vectorbt"):     # same value on both simulator rows
            assert out.loc[(sel, "window", sim), "simulator_sharpe_gap"] == pytest.approx(expected_w)
            assert out.loc[(sel, "daily", sim), "simulator_sharpe_gap"] == pytest.approx(expected_d)
    tau = out["kendall_tau"]
    assert (tau.xs("custom", level="simulator") == 1.0).all()
    assert (tau.xs(("window", "vectorbt"), level=["rebalance", "simulator"]) == 1.0).all()
    assert (tau.xs(("daily", "vectorbt"), level=["rebalance", "simulator"]) == -1.0).all()
    # Temporal fragility consistent with stats.temporal_fragility on the window Sharpes.
    r0 = out.iloc[0]
    assert r0["temporal_fragility"] == pytest.approx(
        r0["window_sharpe_std"] / abs(r0["window_sharpe_mean"]))
    agree = agreement_frame(results)
    assert {"final_equity custom", "final_equity vectorbt", "max rel diff final_equity"} <= set(agree)
    first = agree.iloc[0]
    assert first["max rel diff final_equity"] == pytest.approx(
        abs(first["final_equity vectorbt"] - first["final_equity custom"])
        / first["final_equity custom"])


def test_simulator_sharpe_gap_nan_when_only_custom_and_fast_on_real_run(quick_run):
    out = add_overfitting_columns(quick_run.results, quick_run.returns)
    ok = out[out["status"] == "ok"]
    assert ok["simulator_sharpe_gap"].isna().all()    # only custom ran
    assert ok.loc[ok["selection"] != "benchmark", "dsr"].between(0, 1).all()
    assert out.loc[out["status"] != "ok", "dsr"].isna().all()


def test_overfitting_columns_on_200_strategies():
    # (speed lives in benchmarks, not here; this checks the columns at a realistic size)
    rng = np.random.default_rng(4)
    series = {(f"s{i}", "custom", "p", "window", sim): rng.normal(0.0003, 0.01, 500)
              for i in range(100) for sim in ("custom", "vectorbt")}
    results, returns = make_frames(series)
    out = add_overfitting_columns(results, returns)
    # 100 configurations x 2 simulators: the simulators are replicas, N = 100 (was 200).
    assert (out["n_trials"] == 100).all()
    assert out["n_effective_trials"].between(1, 100).all()
    assert out["pbo"].between(0, 1).all() and out["dsr"].between(0, 1).all()


# ----------------------------------------------------------------------------- real runs
def _run(sp500, **overrides):
    from tournament.config import load_config
    from tournament.pipeline import run_tournament
    cfg = load_config(engines=["custom"], selections=["all", "momentum"], **overrides)
    return cfg, run_tournament(sp500, cfg)


@pytest.fixture(scope="module")
def quick_run(sp500):
    return _run(sp500)[1]


# ----------------------------------------------------------------------------- ledger
def test_ledger_chain_verifies_and_detects_edits(tmp_path):
    from tournament.ledger import Ledger, verify_ledger
    path = tmp_path / "ledger.jsonl"
    led = Ledger(path)
    for i in range(3):
        led.intent("cell", f"c{i}", {"i": i})
        led.outcome("cell", f"c{i}", ["ok", "failed", "unsupported"][i], {"x": 1.5})
    led.seal()
    rep = verify_ledger(path)
    assert rep.ok, rep.summary()
    assert rep.intents == 3 and rep.outcomes == {"ok": 1, "failed": 1, "unsupported": 1}
    # Reopening continues the chain.
    Ledger(path).intent("simulation", "s0")
    rep = verify_ledger(path, require_seal=False)
    assert rep.chain_ok and not rep.balanced       # an intent without outcome
    lines = path.read_text().splitlines(keepends=True)

    # Edited value.
    edited = lines.copy()
    e = json.loads(edited[1])
    e["status"] = "failed"   # was "ok"
    edited[1] = json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(edited))
    rep = verify_ledger(path, require_seal=False)
    assert not rep.ok and not rep.chain_ok

    # Deleted line.
    path.write_text("".join(lines[:2] + lines[3:]))
    assert not verify_ledger(path, require_seal=False).chain_ok

    # Reordered lines.
    path.write_text("".join([lines[1], lines[0], *lines[2:]]))
    assert not verify_ledger(path, require_seal=False).chain_ok

    # Deleted tail (seal + last entry): chain is intact but unsealed.
    path.write_text("".join(lines[:5]))
    rep = verify_ledger(path)
    assert rep.chain_ok and not rep.ok


def test_ledger_for_real_run_balances_and_detects_removed_outcome(tmp_path, quick_run):
    from tournament.cube import OK
    from tournament.ledger import verify_ledger, write_ledger_for_run
    path = tmp_path / "ledger.jsonl"
    head = write_ledger_for_run(path, quick_run.cube, quick_run.results, run_id="t")
    rep = verify_ledger(path, expected_head=head)
    assert rep.ok, rep.summary()
    assert rep.intents == sum(rep.outcomes.values())
    res, cells = quick_run.results, quick_run.cube.cells
    assert rep.by_kind["cell"]["intents"] == len(cells)
    assert rep.by_kind["simulation"]["intents"] == len(res)
    for status in ("ok", "failed", "unsupported"):
        assert rep.by_kind["cell"][status] == int((cells["status"] == status).sum())
        assert rep.by_kind["simulation"][status] == int((res["status"] == status).sum())
    assert (res["status"] != OK).any()        # the unsupported hrp rows are recorded too

    # Remove one outcome line: chain breaks and the intent is left without its outcome.
    lines = path.read_text().splitlines(keepends=True)
    idx = next(i for i, ln in enumerate(lines) if json.loads(ln)["event"] == "outcome")
    path.write_text("".join(lines[:idx] + lines[idx + 1:]))
    rep = verify_ledger(path)
    assert not rep.ok and not rep.balanced and not rep.chain_ok
    assert rep.intents != sum(rep.outcomes.values())


# ----------------------------------------------------------------------------- compare
def _write_run_dir(path, cfg, dataset, result, *, cache_keys=True):
    from flows.plan import stage1_plan
    from tournament.outputs import write_json, write_run
    from tournament.windows import windows_for
    manifest = {"run_id": uuid.uuid4().hex[:12], "mode": "two-stage", "config": cfg.to_dict(),
                "config_digest": cfg.digest(),
                "data": {"source": dataset.source, "fingerprint": dataset.fingerprint,
                         "days": dataset.n_days, "assets": dataset.n_assets},
                "timings": result.timings}
    write_run(path, cube=result.cube, results=result.results, returns=result.returns,
              manifest=manifest)
    if cache_keys:          # the Stage 1 cells' keys, as the flow records them
        _, cell_parts = stage1_plan(cfg, dataset, windows_for(dataset, cfg.windows))
        write_json(path / "cache_keys.json", cell_parts)


def test_compare_identical_and_max_weight_change(tmp_path, sp500, quick_run):
    from tournament.compare import compare_runs, format_comparison
    from tournament.config import load_config
    cfg = load_config(engines=["custom"], selections=["all", "momentum"])
    _write_run_dir(tmp_path / "a", cfg, sp500, quick_run)
    _, again = _run(sp500)
    _write_run_dir(tmp_path / "a2", cfg, sp500, again)
    same = compare_runs(tmp_path / "a", tmp_path / "a2")
    assert same["identical"], format_comparison(same)
    assert same["cells"]["n_changed"] == 0 and same["results"]["n_changed"] == 0
    assert "no changes" in format_comparison(same)

    cfg_b, run_b = _run(sp500, max_weight=0.3)
    _write_run_dir(tmp_path / "b", cfg_b, sp500, run_b)
    diff = compare_runs(tmp_path / "a", tmp_path / "b")
    assert not diff["identical"]
    changed = diff["cells"]["changed"]
    assert len(changed) > 0 and (changed["max_abs_weight_diff"] > 0).all()
    assert len(diff["cells"]["added"]) == 0 and len(diff["cells"]["removed"]) == 0
    # Equal weight is untouched by a 0.3 cap on 10-20 assets; optimisers are.
    assert set(changed["profile"]) <= {"min_variance", "max_sharpe", "risk_parity"}
    assert diff["results"]["n_changed"] > 0
    assert any(r.startswith("config") and "max_weight" in r for r in diff["reasons"])
    assert not any(r.startswith("data") for r in diff["reasons"])
    # Key parts: engine_params per profile changed, data and code did not.
    labels = set(diff["cache_keys"]["summary"])
    assert labels and all(lab.startswith("engine_params.") for lab in labels)
    text = format_comparison(diff)
    assert "max_weight" in text and "engine_params." in text

    # Without cache_keys.json the manifest still explains it.
    (tmp_path / "b" / "cache_keys.json").unlink()
    diff2 = compare_runs(tmp_path / "a", tmp_path / "b")
    assert not diff2["cache_keys"]["available"]
    assert any("max_weight" in r for r in diff2["reasons"])
    assert "cache_keys.json missing in run B" in format_comparison(diff2)
