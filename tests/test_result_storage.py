"""Result storage any host can reach (issue 16, item 2).

(Every test takes the session's `prefect_server` before importing Prefect: Prefect reads
PREFECT_API_URL when it is first imported.)

* `--result-storage` / the flow's `result_storage` take a path, an fsspec URL or a storage
  block slug (`local-file-system/NAME`, loaded with Block.load); with none given,
  PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK is used when set. A run on a block slug caches
  across runs.
* Cache locks live next to the results, through the storage's own filesystem, so two
  processes that do not share a temp directory (different TMPDIR, as on two hosts) exclude
  each other. The storage there is an fsspec URL (`local://shared-results`: fsspec's local
  filesystem, relative to the processes' common working directory; S3 is not reachable here),
  the case whose locks used to sit in each node's temp directory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tournament.errors import ConfigError

TINY = {"engines": ["custom"], "selections": ["all", "momentum"],
        "profiles": ["equal_weight", "min_variance"], "rebalances": ["window"]}


# ----------------------------------------------------------------------------- resolution
def test_block_slugs_paths_and_urls_are_told_apart(prefect_server, tmp_path, monkeypatch):
    from flows.runtime import is_block_slug
    assert is_block_slug("local-file-system/team-cache")
    assert is_block_slug("remote-file-system/s3-results")
    assert is_block_slug("s3-bucket/results")          # listed: a missing collection is reported
    assert not is_block_slug("cache/results")           # not a block type: a relative path
    assert not is_block_slug("s3://bucket/tournament")
    assert not is_block_slug("/abs/local-file-system/x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local-file-system" / "x").mkdir(parents=True)
    assert not is_block_slug("local-file-system/x")     # an existing path stays a path


def test_missing_or_unloadable_blocks_are_one_line_errors(prefect_server):
    from flows.runtime import make_result_storage
    for slug, words in (("local-file-system/never-saved-xyz", "save the block first"),
                        ("s3-bucket/results", "s3-bucket/results")):
        with pytest.raises(ConfigError) as err:
            make_result_storage(slug)
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_url_storage_refuses_a_filesystem_without_exclusive_create(prefect_server):
    from tasks.common import FsspecLockStore, LockStoreError
    import fsspec
    store = FsspecLockStore(fsspec.filesystem("memory"), "memory://locks-probe/.locks")
    store.check_exclusive()                              # fsspec memory honours "xb"

    class Overwrites:                                    # what an old s3fs does with "xb"
        def __init__(self):
            self.fs = fsspec.filesystem("memory")

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def open(self, path, mode="rb", **kw):
            return self.fs.open(path, mode.replace("x", "w"), **kw)
    with pytest.raises(LockStoreError, match="cannot create files exclusively"):
        FsspecLockStore(Overwrites(), "memory://locks-probe2/.locks").check_exclusive()


# ----------------------------------------------------------------------------- locks, 2 processes
LOCK_SCRIPT = r"""
import os, sys, time, json, tempfile
from pathlib import Path
from prefect import flow, task
from tasks.common import locked_policy
from flows.runtime import make_result_storage

who = sys.argv[1]
storage = make_result_storage("local://shared-results")

@task(cache_policy=locked_policy(), persist_result=True)
def slow(cache_key: str, who: str) -> str:
    time.sleep(3)
    with open("executions.jsonl", "a") as fh:
        fh.write(json.dumps({"who": who, "pid": os.getpid(), "tmp": tempfile.gettempdir()}) + "\n")
    return who

@flow(name="lock-check")
def check():
    Path(f"ready-{who}").touch()
    while not Path("go").exists():
        time.sleep(0.02)
    state = slow.with_options(result_storage=storage)(cache_key="lock-check-key", who=who,
                                                      return_state=True)
    print("STATE", state.name, state.result(), flush=True)

check()
"""


def test_locks_exclude_processes_that_share_no_temp_directory(prefect_server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    procs = {}
    for who in ("a", "b"):
        tmp = tmp_path / f"tmp-{who}"
        tmp.mkdir()
        env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO),
               "PREFECT_API_URL": prefect_server}
        procs[who] = subprocess.Popen([sys.executable, "-c", LOCK_SCRIPT, who], cwd=work, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not all((work / f"ready-{w}").exists() for w in procs):
            assert time.monotonic() < deadline, "workers never got ready"
            assert all(p.poll() is None for p in procs.values()), [
                p.communicate()[0][-2000:] for p in procs.values() if p.poll() is not None]
            time.sleep(0.05)
        (work / "go").touch()                      # both ask for the same key at once
        outs = {w: p.communicate(timeout=120)[0] for w, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for w, p in procs.items():
        assert p.returncode == 0, outs[w][-3000:]
    states = {w: next(l for l in outs[w].splitlines() if l.startswith("STATE")).split()[1:]
              for w in outs}
    runs = [json.loads(l) for l in (work / "executions.jsonl").read_text().splitlines()]
    assert len(runs) == 1, f"both processes computed the same key: {runs}"
    winner = runs[0]["who"]
    loser = "b" if winner == "a" else "a"
    assert states[winner] == ["Completed", winner]
    assert states[loser] == ["Cached", winner]       # waited on the lock, then the cache hit
    assert runs[0]["tmp"] == str(tmp_path / f"tmp-{winner}")
    # The locks lived next to the results (and were released); nothing in either TMPDIR.
    assert (work / "shared-results" / ".locks").is_dir()
    assert not list((work / "shared-results" / ".locks").glob("*.lock"))
    for w in procs:
        assert not list((tmp_path / f"tmp-{w}").rglob("*.lock"))


# ----------------------------------------------------------------------------- block slug runs
def test_block_slug_storage_runs_and_caches_across_runs(ray_session, tmp_path, executions):
    from prefect.filesystems import LocalFileSystem
    from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, temporary_settings

    from flows.tournament_flow import tournament
    cache = tmp_path / "team-cache"
    LocalFileSystem(basepath=str(cache)).save("i16-team-cache", overwrite=True)

    def run(name, storage):
        return tournament(fidelity="low", data="sp500", days=400, out=str(tmp_path / name),
                          result_storage=storage, overrides=TINY, num_cpus=2)

    first = run("first", "local-file-system/i16-team-cache")
    assert first["status"] == "completed"
    computed = len(executions())
    assert computed > 0 and first["cache"]["stage1"]["cached"] == 0 < first["cache"]["stage1"]["computed"]
    assert list(cache.glob("*")), "nothing written into the block's basepath"
    assert (cache / ".locks").is_dir()                  # locks next to the results

    second = run("second", "local-file-system/i16-team-cache")
    assert len(executions()) == computed, "the second run recomputed"
    for stage in ("stage1", "stage2"):
        counts = second["cache"][stage]
        assert counts["tasks_cached"] == counts["tasks"] and counts["computed"] == 0

    # No --result-storage: PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK names the same block.
    with temporary_settings({PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: "local-file-system/i16-team-cache"}):
        third = run("third", None)
    assert len(executions()) == computed
    assert third["cache"]["stage1"]["tasks_cached"] == third["cache"]["stage1"]["tasks"]
    manifest = json.loads((tmp_path / "third" / "manifest.json").read_text())
    assert manifest["result_storage"] == "local-file-system/i16-team-cache"
