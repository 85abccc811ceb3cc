"""`tournament(race=True)`: the flow races the tiers through the cached Stage 2 tasks, labels
every row, keeps the statistics on the complete cheap tier, and a later full run on the same
result storage gets every strategy right (a subset's chunks never stand in for full ones)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.test_orchestration import SMALL, read_results, run_flow

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
UNIT = ["selection", "engine", "profile", "rebalance"]


def test_race_flow_promotes_labels_and_matches_a_full_run(ray_session, tmp_path):
    storage = tmp_path / "cache"
    summary = run_flow(tmp_path, "race", storage=storage, fidelity="medium", race=True,
                       race_top_k=2)
    out = tmp_path / "race"
    res = read_results(out)
    man = json.loads((out / "manifest.json").read_text())
    race = man["race"]
    # custom {ew, mv} + skfolio {ew, mv, hrp} per selection (2) + baseline = 11, x 2 modes
    assert race["n_strategies"] == 22 and race["cap"] == 5          # floor(0.25 x 22)
    assert [t["tier"] for t in race["tiers"]] == ["low", "medium"]
    low, medium = race["tiers"]
    assert low["action"] == "rank" and low["n_promoted"] == min(low["set_size"], 5)
    assert medium["action"] == "last" and medium["n_ran"] == low["n_promoted"]
    assert medium["tau"] == pytest.approx(1.0, abs=1e-9)            # vectorbt agrees
    assert summary["race"]["cap"] == 5

    ok = res[(res.status == "ok") & (res.selection != "benchmark")]
    custom, vbt = ok[ok.simulator == "custom"], ok[ok.simulator == "vectorbt"]
    assert len(custom) == 22 and len(vbt) == low["n_promoted"]
    promoted = custom[custom.race_promoted.astype(bool)]
    assert set(map(tuple, promoted[UNIT].to_numpy())) == set(map(tuple, vbt[UNIT].to_numpy()))
    assert (custom.race_tier == "low").all() and (vbt.race_tier == "medium").all()
    assert custom.race_reason.str.match(r"(promoted to medium|not promoted): rank \d+/22").all()
    assert vbt.race_promoted.isna().all()
    # Statistics on the complete cheap tier: every trial counted, custom's paths.
    assert set(ok.n_trials) == {22.0} and set(ok.stats_simulator) == {"custom"}
    assert man["confidence"]["simulator"] == "custom"
    assert man["confidence"]["n_strategies"] == 22
    assert np.allclose(vbt.pbo.to_numpy(float), custom.pbo.iloc[0], equal_nan=True)
    state = json.loads((out / "tournament_state.json").read_text())
    assert state["stages"]["stage2"]["pending"] == 0
    assert state["stages"]["stage2"]["total"] == 22 + low["n_promoted"]     # custom + vectorbt
    assert "Racing: 22 strategies" in (out / "report.html").read_text()

    # A full run on the same storage: vectorbt on every strategy, same numbers.
    run_flow(tmp_path, "full", storage=storage, fidelity="medium")
    full = read_results(tmp_path / "full")
    assert "race_tier" not in full
    fok = full[(full.status == "ok") & (full.selection != "benchmark")]
    assert len(fok[fok.simulator == "vectorbt"]) == 22
    merged = ok.merge(fok, on=[*UNIT, "simulator"], suffixes=("", "_full"))
    assert len(merged) == len(ok)
    assert np.allclose(merged.sharpe, merged.sharpe_full, rtol=0, atol=1e-12)
    assert np.allclose(merged.dsr, merged.dsr_full, rtol=0, atol=1e-12)
    assert (merged.mcs.astype(object) == merged.mcs_full.astype(object)).all()


def test_race_flow_stops_on_a_disagreeing_tier(ray_session, tmp_path, monkeypatch):
    """The promotion runs in the flow's process: a rank check that fails there (tau forced
    to -1 between vectorbt and custom) stops the run before the high tier, with the numbers,
    and RaceStopped reaches the caller as itself (the CLI maps it to exit 4)."""
    import tournament.race as race
    from tournament.race import RaceStopped
    monkeypatch.setattr(race, "kendall_tau", lambda a, b: -1.0)
    overrides = {**SMALL, "selections": ["momentum"], "rebalances": ["window"],
                 "simulator_list": ["custom", "vectorbt", "cvxportfolio"]}
    with pytest.raises(RaceStopped, match=r"race stopped at tier medium: its ranking by "
                       r"vectorbt Sharpe disagrees with custom's \(Kendall tau -1\.000"):
        run_flow(tmp_path, "stop", storage=tmp_path / "cache", fidelity="high",
                 overrides=overrides, race=True, race_on_disagreement="stop")
    assert not (tmp_path / "stop" / "results.parquet").exists()
    state = json.loads((tmp_path / "stop" / "tournament_state.json").read_text())
    assert state["status"] == "failed"


def test_cli_maps_a_race_stop_to_exit_4_and_bad_race_settings_to_exit_2(monkeypatch, capsys):
    import flows.cli as cli
    from tournament.race import RaceStopped

    def stop(args, clock):
        raise RuntimeError("flow failed") from RaceStopped("race stopped at tier medium: x")
    monkeypatch.setattr(cli, "cmd_run", stop)
    assert cli.main(["run", "--race"]) == 4
    assert capsys.readouterr().err.strip() == "error: race stopped at tier medium: x"
    monkeypatch.undo()
    assert cli.main(["run", "--race", "--race-cap", "1.5"]) == 2
    assert "race cap: 1.5 must be in (0, 1]" in capsys.readouterr().err
