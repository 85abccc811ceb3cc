"""A new engine is one file plus one registry line (README "Architecture").

The toy engine below is that file; `register("engine", ...)` is that line, the same public
call the built-in engines' lines use. A small tournament then runs it beside a built-in
engine through the core pipeline, and its weights are checked against an independent
computation of its rule (inverse volatility of the selected assets)."""
from __future__ import annotations

import numpy as np
import pytest

from tournament import registry
from tournament.config import load_config
from tournament.data import make_synthetic
from tournament.engines.base import Engine, EngineOutput, EngineParams
from tournament.errors import ConfigError
from tournament.pipeline import run_tournament
from tournament.schema import OK, UNSUPPORTED
from tournament.windows import make_windows


class InverseVolEngine(Engine):
    name = "toy_inverse_vol"
    PROFILE_METHODS = {"risk_parity": "_inverse_vol"}

    def _inverse_vol(self, train: np.ndarray, params: EngineParams) -> EngineOutput:
        inv = 1.0 / train.std(axis=0, ddof=1)
        return EngineOutput(inv / inv.sum(), solver="closed_form")


@pytest.fixture
def toy_registered():
    saved = dict(registry.ENGINES)
    registry.register("engine", InverseVolEngine.name, f"{__name__}:InverseVolEngine")
    yield
    registry.ENGINES.clear()
    registry.ENGINES.update(saved)


def test_registered_engine_runs_in_a_tournament(toy_registered):
    data = make_synthetic(n_days=160, n_assets=8, seed=5)
    config = load_config(engines=["toy_inverse_vol", "custom"], selections=["all"],
                         profiles=["risk_parity", "min_variance"], rebalances=["window"],
                         train=60, test=20, step=20)
    result = run_tournament(data, config)
    cells = result.cube.cells
    toy = cells[cells["engine"] == "toy_inverse_vol"]
    windows = make_windows(data.n_days, config.windows)
    assert len(toy) == 2 * len(windows)
    assert set(toy.loc[toy["profile"] == "min_variance", "status"]) == {UNSUPPORTED}
    solved = toy[toy["profile"] == "risk_parity"]
    assert set(solved["status"]) == {OK} and set(solved["solver"]) == {"closed_form"}
    # The weights are the rule's, computed here from each window's own training slice.
    for w in windows:
        row = np.flatnonzero((cells["engine"] == "toy_inverse_vol").to_numpy()
                             & (cells["profile"] == "risk_parity").to_numpy()
                             & (cells["window_start"] == data.dates[w.rebalance]).to_numpy())
        assert row.size == 1
        inv = 1.0 / data.returns[w.train_rows].std(axis=0, ddof=1)
        np.testing.assert_allclose(result.cube.weights[row[0]], inv / inv.sum(), rtol=1e-12)
    rows = result.results[result.results["engine"] == "toy_inverse_vol"]
    assert set(rows["status"]) == {OK, UNSUPPORTED}
    assert rows.loc[rows["status"] == OK, "sharpe"].notna().all()


def test_registry_refuses_a_silent_swap_and_lists_valid_kinds(toy_registered):
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("engine", "custom", f"{__name__}:InverseVolEngine")
    with pytest.raises(ConfigError, match="valid: engine, simulator"):
        registry.register("optimizer", "x", "a:B")


def test_an_unregistered_engine_is_a_config_error_listing_the_valid_ones():
    with pytest.raises(ConfigError, match="toy_inverse_vol") as err:
        load_config(engines=["toy_inverse_vol"])
    assert "custom" in str(err.value) and "skfolio" in str(err.value)
