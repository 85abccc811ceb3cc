"""Fault catalogue #6: cache correctness (property-based, pure functions, no server).

Every input a result depends on must change the cache keys of exactly the chunks it
affects: a missed dependency serves stale results; an extra one recomputes needlessly.
Chunks are grouped as the flow groups them (Stage 1 by (selection, engine); Stage 2 by
(rebalance, simulator) and strategy)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tournament.keys as keys_mod
from tournament.config import CostModel, WindowSpec, load_config
from tournament.data import Dataset
from tournament.keys import cache_key, stage2_key_parts
from tournament.registry import PROFILES, REBALANCE_MODES, SELECTIONS, SIMULATORS, USER_ENGINES
from tournament.windows import windows_for

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
N_DAYS = 400


def subset(values):
    return st.lists(st.sampled_from(values), min_size=1, max_size=len(values), unique=True)


grids = st.fixed_dictionaries({"selections": subset(SELECTIONS), "engines": subset(USER_ENGINES),
                               "profiles": subset(PROFILES)})


def _dataset_of(days: int = N_DAYS, assets: int = 6, seed: int = 7) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.normal(0, 0.01, (days, assets)),
                   pd.bdate_range("2020-01-01", periods=days),
                   tuple(f"A{i}" for i in range(assets)), "test")


DATA = _dataset_of()


def stage1_keys(cfg, dataset=DATA) -> dict[tuple[str, str], str]:
    """Stage 1 chunk keys as the flow builds them (flows.plan), by (selection, engine).
    Chunks of unsupported cells only are left out: they read nothing, so no input changes
    their keys."""
    from flows.plan import stage1_plan
    chunks, _ = stage1_plan(cfg, dataset, windows_for(dataset, cfg.windows))
    out = {}
    for chunk in chunks:
        if not chunk.stored_units():
            continue
        sel, eng = chunk.name.split("/")[:2]
        out[(sel, eng)] = cache_key({"stage": 1, "chunks": [out.get((sel, eng)), chunk.key]})
    return out


def cell_keys(cfg, dataset=DATA) -> dict[tuple, str]:
    """Every Stage 1 cell's key, by (window date, selection, engine, profile)."""
    from flows.plan import stage1_plan
    _, parts = stage1_plan(cfg, dataset, windows_for(dataset, cfg.windows))
    return {tuple(p["cell"]): k for k, p in parts.items()}


def stage2_keys(cfg, fingerprint="data-f") -> dict[tuple[str, str], str]:
    return {(r, s): cache_key(stage2_key_parts(["d1", "d2"], rebalance=r, simulator=s,
                                               returns_fingerprint=fingerprint, config=cfg))
            for r in REBALANCE_MODES for s in SIMULATORS}


def changed(a: dict, b: dict) -> set:
    assert a.keys() == b.keys()
    return {k for k in a if a[k] != b[k]}


def profiles_of(cfg, name) -> set:
    """The profiles a chunk solves (an unsupported cell has no key to change)."""
    from tournament.stage1 import engine_instance
    sel, eng = name
    profiles = {"equal_weight"} if eng == "baseline" else set(cfg.profiles)
    return {p for p in profiles if engine_instance(eng).supports(p)}


# ---------------------------------------------------------------- Stage 1 config parts
@SETTINGS
@given(grid=grids, top_k=st.integers(2, 15), delta=st.integers(1, 5))
def test_top_k_changes_exactly_the_ranked_selections(grid, top_k, delta):
    a, b = load_config(**grid, top_k=top_k), load_config(**grid, top_k=top_k + delta)
    ka, kb = stage1_keys(a), stage1_keys(b)
    assert changed(ka, kb) == {n for n in ka if n[0] != "all"}
    assert stage2_keys(a) == stage2_keys(b)


@SETTINGS
@given(grid=grids, rf=st.floats(-0.001, 0.001, allow_nan=False), delta=st.floats(1e-6, 1e-3))
def test_risk_free_changes_only_chunks_with_max_sharpe_cells(grid, rf, delta):
    a, b = load_config(**grid, risk_free=rf), load_config(**grid, risk_free=rf + delta)
    ka, kb = stage1_keys(a), stage1_keys(b)
    assert changed(ka, kb) == {n for n in ka if "max_sharpe" in profiles_of(a, n)}


@SETTINGS
@given(grid=grids, field=st.sampled_from(["max_weight", "covariance"]))
def test_engine_params_change_every_optimised_chunk(grid, field):
    a = load_config(**grid)
    b = load_config(**grid, **({"max_weight": 0.5} if field == "max_weight" else
                               {"covariance": "sample"}))
    ka, kb = stage1_keys(a), stage1_keys(b)
    # Every user-engine chunk must change. (The raw-pool baseline is solved with cap 1.0 and
    # ignores these; its key changing too is a harmless over-invalidation, see report.)
    assert changed(ka, kb) >= {n for n in ka if n[1] != "baseline"}
    assert stage2_keys(a) == stage2_keys(b)


@SETTINGS
@given(grid=grids, which=st.sampled_from(["train", "test", "step"]), delta=st.integers(1, 30))
def test_window_sizes_change_the_stage1_cells_that_read_other_rows(grid, which, delta):
    """Point in time: a cell reads its training slice only. A new train length changes every
    cell; a new step moves rebalance days, and a cell on a day both grids share keeps its
    key (same slice); a new test length changes no cell (the cube takes the test ends from
    the windows, not from the cells)."""
    base = dict(train=120, test=40, step=40)
    a = load_config(**grid, **base)
    b = load_config(**grid, **{**base, which: base[which] + delta})
    ka, kb = cell_keys(a), cell_keys(b)
    if which == "test":
        assert ka == kb and stage1_keys(a) == stage1_keys(b)
        return
    common = set(ka) & set(kb)
    unchanged = {c for c in common if ka[c] == kb[c]}
    assert unchanged == (set() if which == "train" else common)
    assert changed(stage1_keys(a), stage1_keys(b)) == set(stage1_keys(a))


@SETTINGS
@given(grid=grids, slip=st.floats(0, 50), comm=st.floats(0, 50), delta=st.floats(0.01, 10))
def test_costs_change_every_stage2_key_and_no_stage1_key(grid, slip, comm, delta):
    a = load_config(**grid, slippage_bps=slip, commission_bps=comm)
    for b in (load_config(**grid, slippage_bps=slip + delta, commission_bps=comm),
              load_config(**grid, slippage_bps=slip, commission_bps=comm + delta)):
        assert stage1_keys(a) == stage1_keys(b)          # no engine uses costs
        ka, kb = stage2_keys(a), stage2_keys(b)
        assert changed(ka, kb) == set(ka)


@SETTINGS
@given(tol=st.floats(0.01, 0.5), delta=st.floats(0.001, 0.4))
def test_tolerance_changes_only_tolerance_mode_stage2_keys(tol, delta):
    a, b = load_config(tolerance=tol), load_config(tolerance=min(tol + delta, 1.0))
    ka, kb = stage2_keys(a), stage2_keys(b)
    assert changed(ka, kb) == {k for k in ka if k[0] == "tolerance"}
    assert stage1_keys(a) == stage1_keys(b)


def test_config_fields_not_in_any_key_do_not_affect_computation():
    """Guard for new config fields: every field must be either in a key part or listed here
    as affecting only driver-side work (grid shape, metrics)."""
    key_fields = {"windows", "costs", "max_weight", "top_k", "tolerance", "covariance",
                  "risk_free"}
    # on_infeasible: applied when the driver assembles the cube from cached cells; Stage 2
    # keys on the resulting weight schedules, so a policy change re-simulates exactly the
    # strategies whose schedules it changes.
    driver_only = {"selections", "engines", "profiles", "rebalances", "fidelity",
                   "simulator_list", "annualization", "on_infeasible"}
    fields = {f.name for f in dataclasses.fields(load_config())}
    assert fields == key_fields | driver_only, (
        f"new config field(s) {fields - key_fields - driver_only}: put them in a key part "
        "(tournament.keys) or declare them driver-only here")


# ---------------------------------------------------------------- code versions
@SETTINGS
@given(grid=grids, engine=st.sampled_from(list(USER_ENGINES) + ["baseline"]))
def test_engine_code_change_invalidates_only_that_engines_chunks(grid, engine):
    cfg = load_config(**grid)
    before = stage1_keys(cfg)
    target = keys_mod.module_of("engine", engine)
    real = keys_mod.source_digest
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keys_mod, "source_digest",
                   lambda m: real(m) + ("-edited" if m == target else ""))
        after = stage1_keys(cfg)
        s2 = stage2_keys(cfg)
    assert changed(before, after) == {n for n in before if n[1] == engine}
    assert s2 == stage2_keys(cfg)


@SETTINGS
@given(simulator=st.sampled_from(list(SIMULATORS)))
def test_simulator_code_change_invalidates_only_that_simulators_keys(simulator):
    cfg = load_config()
    before, s1 = stage2_keys(cfg), stage1_keys(cfg)
    target = keys_mod.module_of("simulator", simulator)
    real = keys_mod.source_digest
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keys_mod, "source_digest",
                   lambda m: real(m) + ("-edited" if m == target else ""))
        after, s1_after = stage2_keys(cfg), stage1_keys(cfg)
    expect = {k for k in before if k[1] == simulator}
    if simulator == "custom":   # custom.py is shared by every simulator (orders/kernel)
        expect = set(before)
    assert changed(before, after) == expect
    assert s1 == s1_after


@pytest.mark.parametrize("module,stage", [(m, 1) for m in keys_mod.STAGE1_SHARED_MODULES]
                         + [(m, 2) for m in keys_mod.STAGE2_SHARED_MODULES])
def test_shared_module_change_invalidates_its_whole_stage(module, stage):
    cfg = load_config()
    b1, b2 = stage1_keys(cfg), stage2_keys(cfg)
    real = keys_mod.source_digest
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keys_mod, "source_digest", lambda m: real(m) + ("-x" if m == module else ""))
        a1, a2 = stage1_keys(cfg), stage2_keys(cfg)
    assert changed(b1, a1) == (set(b1) if stage == 1 else set())
    assert changed(b2, a2) == (set(b2) if stage == 2 else set())


def test_fault_rules_are_part_of_the_task_cache_key():
    """tournament.faults is imported by stage1 and simulators.base; its hooks sit in those
    (hashed) files, so editing a hook invalidates; the rules themselves key via tasks.common."""
    from tasks.common import key_from_parameters
    import os
    params = {"cache_key": "s1-abc"}
    old = os.environ.pop("TOURNAMENT_FAULTS", None)
    try:
        assert key_from_parameters(None, params) == "s1-abc"
        os.environ["TOURNAMENT_FAULTS"] = "engine:custom/min_variance:raise"
        k1 = key_from_parameters(None, params)
        os.environ["TOURNAMENT_FAULTS"] = "engine:custom/min_variance:nan"
        k2 = key_from_parameters(None, params)
    finally:
        os.environ.pop("TOURNAMENT_FAULTS", None)
        if old is not None:
            os.environ["TOURNAMENT_FAULTS"] = old
    assert len({"s1-abc", k1, k2}) == 3 and k1.startswith("s1-abc")


# ---------------------------------------------------------------- data fingerprint
def _dataset(seed: int, days=30, assets=4, bench=True, values=None, dates=None, names=None,
             bench_values=None):
    rng = np.random.default_rng(seed)
    r = rng.normal(0, 0.01, (days, assets)) if values is None else values
    idx = pd.bdate_range("2021-01-04", periods=days) if dates is None else dates
    cols = tuple(f"A{i}" for i in range(assets)) if names is None else names
    b = (rng.normal(0, 0.01, days) if bench_values is None else bench_values) if bench else None
    return Dataset(np.array(r), idx, cols, "test", b, "BM" if bench else None)


MUTATIONS = ["value", "nan", "index", "column_name", "column_order", "dtype", "benchmark",
             "tail", "tiny"]


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), mutation=st.sampled_from(MUTATIONS),
       i=st.integers(0, 29), j=st.integers(0, 3))
def test_fingerprint_changes_with_any_change_of_values_index_columns_dtype(seed, mutation, i, j):
    base = _dataset(seed)
    same = _dataset(seed)
    assert base.fingerprint == same.fingerprint
    r, idx, cols, bench = base.returns.copy(), base.dates, base.assets, base.benchmark.copy()
    kw = {}
    if mutation == "value":
        r[i, j] += 1e-3
    elif mutation == "tiny":
        r[i, j] = np.nextafter(r[i, j], 1.0)          # one ulp
    elif mutation == "nan":
        r[i, j] = np.nan
    elif mutation == "index":
        idx = idx.delete(i).insert(i, idx[i] + pd.Timedelta(hours=1))
    elif mutation == "column_name":
        cols = tuple(c + "x" if k == j else c for k, c in enumerate(cols))
    elif mutation == "column_order":
        k = (j + 1) % 4
        order = list(range(4))
        order[j], order[k] = order[k], order[j]
        r, cols = r[:, order], tuple(cols[o] for o in order)
        if np.array_equal(r, base.returns):
            return
    elif mutation == "dtype":
        r = r.astype(np.float32)
    elif mutation == "benchmark":
        bench[i] += 1e-4
    elif mutation == "tail":
        kw = {"days": 29}
        r, idx, bench = r[1:], idx[1:], bench[1:]
    other = Dataset(np.ascontiguousarray(r), idx, cols, "test", bench, "BM")
    assert other.fingerprint != base.fingerprint, mutation


# ---------------------------------------------------------------- point in time (issue 15)
POINT_IN_TIME = dict(selections=["all", "momentum"], engines=["custom"],
                     profiles=["min_variance", "equal_weight"], train=120, test=40, step=20)


def _grown(ds: Dataset, rows: int, seed: int = 11) -> Dataset:
    """`ds` with `rows` more trading days appended (its own rows unchanged)."""
    more = np.random.default_rng(seed).normal(0, 0.01, (rows, ds.n_assets))
    dates = ds.dates.append(pd.bdate_range(ds.dates[-1] + pd.offsets.BDay(), periods=rows))
    return Dataset(np.vstack([ds.returns, more]), dates, ds.assets, "test")


@pytest.mark.parametrize("rows", [1, 5, 19])
def test_appended_days_that_open_no_window_change_no_cell_key(rows):
    cfg = load_config(**POINT_IN_TIME)
    base = _dataset_of(days=400)         # rebalance rows 119, 139, ..., 399: next is 419
    assert cell_keys(cfg, base) == cell_keys(cfg, _grown(base, rows))
    assert stage1_keys(cfg, base) == stage1_keys(cfg, _grown(base, rows))


def test_one_step_of_days_adds_exactly_the_new_windows_cells():
    cfg = load_config(**POINT_IN_TIME)
    base = _dataset_of(days=400)
    before, after = cell_keys(cfg, base), cell_keys(cfg, _grown(base, 20))
    assert {c: k for c, k in after.items() if c in before} == before
    new = set(after) - set(before)
    assert len({c[0] for c in new}) == 1          # one new window: every cell of the grid
    assert {c[1:] for c in new} == {c[1:] for c in before}


def test_an_asset_column_added_later_changes_only_windows_that_read_it():
    cfg = load_config(**POINT_IN_TIME)
    base = _dataset_of(days=400)
    column = np.full(400, np.nan)
    column[150:] = np.random.default_rng(3).normal(0, 0.01, 250)   # returns from row 150
    wider = Dataset(np.column_stack([base.returns, column]), base.dates,
                    (*base.assets, "NEW"), "test")
    before, after = cell_keys(cfg, base), cell_keys(cfg, wider)
    windows = windows_for(base, cfg.windows)
    full_history = {str(base.dates[w.rebalance].date()) for w in windows
                    if w.train_rows.start >= 150}
    changed_cells = {c for c in before if before[c] != after[c]}
    assert {c[0] for c in changed_cells} == full_history
    assert full_history and len(full_history) < len(windows)


@SETTINGS
@given(row=st.integers(0, N_DAYS - 1), asset=st.integers(0, 5))
def test_a_corrected_value_changes_exactly_the_cells_that_read_its_row(row, asset):
    cfg = load_config(**POINT_IN_TIME)
    values = DATA.returns.copy()
    values[row, asset] += 1e-3
    fixed = Dataset(values, DATA.dates, DATA.assets, "test")
    before, after = cell_keys(cfg, DATA), cell_keys(cfg, fixed)
    reads = {str(DATA.dates[w.rebalance].date()) for w in windows_for(DATA, cfg.windows)
             if w.train_rows.start <= row < w.train_rows.stop}
    assert {c[0] for c in before if before[c] != after[c]} == reads


def test_stage2_keys_on_the_horizon_rows_only():
    from tournament.keys import horizon_fingerprint
    ds = DATA
    fp = horizon_fingerprint(ds.returns, ds.dates, ds.assets, 119, N_DAYS - 1)
    values = ds.returns.copy()
    values[50] += 1e-3                   # before the first rebalance row: no path reads it
    early = Dataset(values, ds.dates, ds.assets, "test")
    assert horizon_fingerprint(early.returns, early.dates, early.assets, 119, N_DAYS - 1) == fp
    grown = _grown(ds, 1)
    assert horizon_fingerprint(grown.returns, grown.dates, grown.assets, 119, N_DAYS) != fp
    values = ds.returns.copy()
    values[200, 2] += 1e-3               # a corrected row inside the horizon
    late = Dataset(values, ds.dates, ds.assets, "test")
    assert horizon_fingerprint(late.returns, late.dates, late.assets, 119, N_DAYS - 1) != fp
