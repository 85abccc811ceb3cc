"""flows.plan's stored-run marker: the hint that decides whether a run starts Ray (and warms
its workers) before it knows it has work. It must change with anything a run's results depend
on, and never exist for remote storage."""
from __future__ import annotations

from flows.plan import expects_compute, mark_stored_run, run_digest, stored_run_marker
from tournament.config import load_config
from tournament.data import load_dataset


def _digest(days=120, **overrides):
    config = load_config(None, **overrides)
    dataset = load_dataset("synthetic:200x10", days=days)
    return run_digest(config, dataset)


def test_marker_is_written_after_a_run_and_found_by_the_same_run_only(tmp_path):
    store = tmp_path / "results"
    digest = _digest()
    assert expects_compute(str(store), digest, refresh=False)
    mark_stored_run(str(store), digest)
    assert stored_run_marker(str(store), digest).is_file()
    assert not expects_compute(str(store), digest, refresh=False)
    assert expects_compute(str(store), digest, refresh=True)        # --refresh recomputes
    # Another config, more data, or a race: another run.
    for other in (_digest(engines=["custom"]), _digest(days=121)):
        assert other != digest and expects_compute(str(store), other, refresh=False)
    config, dataset = load_config(None), load_dataset("synthetic:200x10", days=120)
    assert run_digest(config, dataset, raced=True) != run_digest(config, dataset)


def test_remote_storage_and_blocks_have_no_marker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    digest = _digest()
    for location in ("s3://bucket/results", "remote-file-system/nightly-results"):
        assert stored_run_marker(location, digest) is None
        assert expects_compute(location, digest, refresh=False)
        mark_stored_run(location, digest)                  # a no-op: nothing is created
    assert list(tmp_path.iterdir()) == []
