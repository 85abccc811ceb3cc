"""tournament.schema: RunDir reads what exists, says what a missing or corrupt file means,
and writes atomically (no temp file left behind, an old file survives a failed write)."""
from __future__ import annotations

import pandas as pd
import pytest

from tournament.schema import MANIFEST, RESULTS, RunDir, atomic_write


def test_missing_files_follow_the_callers_rule(tmp_path):
    run = RunDir(tmp_path)
    assert run.frame(RESULTS).empty and run.json(MANIFEST) is None
    assert run.json(MANIFEST, default={}) == {}
    with pytest.raises(FileNotFoundError, match="results.parquet: missing"):
        run.frame(RESULTS, required=True)
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        RunDir(tmp_path / "nope").require_dir()


def test_json_roundtrip_update_and_corrupt_file(tmp_path):
    run = RunDir(tmp_path)
    run.write_json(MANIFEST, {"a": 1, "timings": {}})
    assert run.update_json(MANIFEST, timings={"total": 2.5}) == {"a": 1, "timings": {"total": 2.5}}
    assert run.json(MANIFEST) == {"a": 1, "timings": {"total": 2.5}}
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: unreadable JSON"):
        run.json(MANIFEST)
    assert run.json(MANIFEST, default={}, unreadable="default") == {}


def test_frames_roundtrip_with_column_selection(tmp_path):
    run = RunDir(tmp_path)
    frame = pd.DataFrame({"selection": ["all", "momentum"], "sharpe": [0.5, 1.25]})
    run.write_frame(RESULTS, frame)
    pd.testing.assert_frame_equal(run.frame(RESULTS), frame)
    assert list(run.frame(RESULTS, columns=["sharpe"]).columns) == ["sharpe"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, boom)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
