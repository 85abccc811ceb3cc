"""tournament.compare on small hand-made run directories (no pipeline run): every kind of
difference it reports, with the counts and numbers known by construction."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tournament.compare import compare_runs, format_comparison

W1, W2, W3 = (pd.Timestamp(d) for d in ("2021-01-04", "2021-02-01", "2021-03-01"))


def write_run(d: Path, *, cells, weights, results, manifest, cache_keys=None) -> Path:
    d.mkdir(parents=True)
    cols = ["window_start", "selection", "engine", "profile"]
    pd.DataFrame(cells, columns=[*cols, "status"]).to_parquet(d / "cells.parquet")
    pd.DataFrame(weights, columns=[*cols, "asset", "weight"]).to_parquet(
        d / "weights_cube.parquet")
    pd.DataFrame(results, columns=["selection", "engine", "profile", "rebalance", "simulator",
                                   "status", "sharpe", "final_equity"]).to_parquet(
        d / "results.parquet")
    (d / "manifest.json").write_text(json.dumps(manifest))
    if cache_keys is not None:
        (d / "cache_keys.json").write_text(json.dumps(cache_keys))
    return d


def base_run(d: Path, **changes) -> Path:
    run = dict(
        cells=[(W1, "all", "custom", "min_variance", "ok"),
               (W2, "all", "custom", "min_variance", "ok")],
        weights=[(W1, "all", "custom", "min_variance", "AAA", 0.6),
                 (W1, "all", "custom", "min_variance", "BBB", 0.4),
                 (W2, "all", "custom", "min_variance", "AAA", 0.5),
                 (W2, "all", "custom", "min_variance", "BBB", 0.5)],
        results=[("all", "custom", "min_variance", "window", "custom", "ok", 0.8, 1.12),
                 ("all", "custom", "min_variance", "daily", "custom", "ok", 0.7, 1.10)],
        manifest={"run_id": "x", "timings": {"total": 1.0},
                  "data": {"fingerprint": "f1", "n_days": 300},
                  "config": {"windows": {"train": 180}}, "versions": {"numpy": "2.0"}},
        cache_keys={"k1": {"stage": 1, "cells": [[0, "all", "custom", "min_variance"]],
                           "data": "f1", "engine_params": {"min_variance": {"cap": 1.0}},
                           "code": {"custom": "c1"}}})
    run.update(changes)
    return write_run(d, **run)


def test_identical_runs_differ_only_in_volatile_fields(tmp_path):
    a = base_run(tmp_path / "a")
    b = base_run(tmp_path / "b", manifest={**json.loads((a / "manifest.json").read_text()),
                                           "run_id": "y", "timings": {"total": 9.0}})
    comparison = compare_runs(a, b)
    assert comparison["identical"]
    assert "no changes" in format_comparison(comparison)


def test_cells_added_removed_and_weight_changes(tmp_path):
    a = base_run(tmp_path / "a")
    b = base_run(tmp_path / "b",
                 cells=[(W2, "all", "custom", "min_variance", "failed"),
                        (W3, "all", "custom", "min_variance", "ok")],
                 weights=[(W3, "all", "custom", "min_variance", "AAA", 1.0),
                          # W2 failed: no weights (a missing asset counts as 0)
                          ])
    cells = compare_runs(a, b)["cells"]
    assert (cells["n_a"], cells["n_b"]) == (2, 2)
    assert cells["added"]["window_start"].tolist() == [W3]
    assert cells["removed"]["window_start"].tolist() == [W1]
    assert cells["n_changed"] == 1 and cells["n_status_changed"] == 1
    assert cells["max_abs_weight_diff"] == pytest.approx(0.5)


def test_results_sharpe_and_status_changes(tmp_path):
    a = base_run(tmp_path / "a")
    b = base_run(tmp_path / "b", results=[
        ("all", "custom", "min_variance", "window", "custom", "ok", 0.85, 1.13),
        ("all", "custom", "min_variance", "daily", "custom", "failed", None, None),
        ("all", "custom", "min_variance", "tolerance", "custom", "ok", 0.9, 1.2)])
    res = compare_runs(a, b)["results"]
    assert (res["n_a"], res["n_b"]) == (2, 3)
    assert res["added"]["rebalance"].tolist() == ["tolerance"] and res["removed"].empty
    assert res["n_changed"] == 2 and res["n_status_changed"] == 1
    assert res["max_abs_sharpe_diff"] == pytest.approx(0.05)
    window = res["changed"].set_index("rebalance").loc["window"]
    assert window["final_equity_diff"] == pytest.approx(0.01)


def test_reasons_name_data_config_versions_and_key_parts(tmp_path):
    a = base_run(tmp_path / "a")
    manifest = json.loads((a / "manifest.json").read_text())
    manifest["data"]["fingerprint"] = "f2"
    manifest["config"]["windows"]["train"] = 120
    manifest["versions"]["numpy"] = "2.1"
    keys = {"k2": {"stage": 1, "cells": [[0, "all", "custom", "min_variance"]], "data": "f2",
                   "engine_params": {"min_variance": {"cap": 0.5}}, "code": {"custom": "c1"}}}
    comparison = compare_runs(a, base_run(tmp_path / "b", manifest=manifest, cache_keys=keys))
    reasons = comparison["reasons"]
    assert reasons[:3] == ["data changed (fingerprint)",
                           "config: windows.train changed (180 -> 120)",
                           "library versions changed: numpy"]
    assert "data changed (1 cache key)" in reasons
    assert "engine_params.min_variance changed (1 cache key)" in reasons
    assert not any(r.startswith("code") for r in reasons)
    assert not comparison["identical"]


def test_missing_cache_keys_and_missing_run_are_reported(tmp_path):
    a = base_run(tmp_path / "a")
    # Without keys on one side, runs whose files agree are still identical ...
    assert compare_runs(a, base_run(tmp_path / "b0", cache_keys=None))["identical"]
    # ... and when they differ, the report says why it cannot explain the keys.
    b = base_run(tmp_path / "b", cache_keys=None, results=[
        ("all", "custom", "min_variance", "window", "custom", "ok", 0.9, 1.12)])
    text = format_comparison(compare_runs(a, b))
    assert "cache_keys.json missing in run B" in text
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        compare_runs(a, tmp_path / "nope")
