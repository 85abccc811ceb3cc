"""tournament.run_dirs: dated run directories, `latest` and retention (no Prefect)."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from tournament.run_dirs import (LATEST, dated_run_dirs, latest_target, point_latest,
                                 prune_run_dirs, run_stamp)
from tournament.schema import RUN_COMPLETED, RUN_COMPLETED_WITH_FAILURES, STATE

NIGHT = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)


def _run(root, when, status):
    run = root / run_stamp(when)
    run.mkdir(parents=True)
    (run / STATE).write_text(json.dumps({"status": status}))
    return run


def test_stamps_are_utc_sortable_and_portable():
    assert run_stamp(NIGHT) == "2026-12-01T02-00-00Z"
    assert run_stamp(NIGHT.astimezone(timezone(timedelta(hours=-5)))) == "2026-12-01T02-00-00Z"
    assert run_stamp(datetime(2026, 12, 1, 2)) == "2026-12-01T02-00-00Z"     # naive = UTC


def test_latest_points_at_the_newest_complete_run_only(tmp_path):
    first = _run(tmp_path, NIGHT, RUN_COMPLETED)
    assert point_latest(tmp_path) == first
    assert os.readlink(tmp_path / LATEST) == first.name           # relative link
    second = _run(tmp_path, NIGHT + timedelta(days=1), RUN_COMPLETED_WITH_FAILURES)
    _run(tmp_path, NIGHT + timedelta(days=2), "running")          # not complete: skipped
    (tmp_path / "notes").mkdir()                                   # not a run directory
    assert point_latest(tmp_path) == second
    assert latest_target(tmp_path) == tmp_path / second.name
    assert (tmp_path / LATEST / STATE).is_file()
    assert not list(tmp_path.glob(".latest*"))                    # no temp link left


def test_no_complete_run_leaves_latest_alone(tmp_path):
    _run(tmp_path, NIGHT, "failed")
    assert point_latest(tmp_path) is None
    assert not (tmp_path / LATEST).exists()


def test_retention_keeps_the_newest_n_and_never_latest_or_the_current_run(tmp_path):
    runs = [_run(tmp_path, NIGHT + timedelta(days=d), RUN_COMPLETED) for d in range(5)]
    (tmp_path / "notes").mkdir()
    assert prune_run_dirs(tmp_path, None) == []                    # default: keep all
    point_latest(tmp_path)
    removed = prune_run_dirs(tmp_path, 2, spare=runs[0])
    assert removed == runs[1:3]
    assert dated_run_dirs(tmp_path) == [runs[0], runs[3], runs[4]]
    assert (tmp_path / "notes").is_dir()
    with pytest.raises(ValueError, match="at least 1"):
        prune_run_dirs(tmp_path, 0)
