"""The nightly deployment end to end (issue 15): a real Prefect server, `prefect deploy --all`
from git, a process worker in its own venv (the machinery of tests/test_deployments_e2e.py),
a prices file that grows between nights, the failure automation and a local webhook.

    grow_prices --init 300  ->  `deployments/nightly.py data-source --path file://...`
      ->  `deployments/nightly.py automation --webhook http://127.0.0.1:P/hook`
      ->  night 1: a dated run directory, `latest` -> it
      ->  grow_prices --append 20  ->  night 2: a second directory, `latest` -> it, fewer
          cells computed than night 1 (point-in-time cache keys)
      ->  night 3 with an injected solver failure (TOURNAMENT_FAULTS) and keep_run_dirs=2:
          CompletedWithFailures, one warning per failed strategy, the failures in the
          summary artifact, the oldest directory removed; a nightly run created while it
          runs is Cancelled (CANCEL_NEW); the webhook gets exactly one notification (none
          for the completed nights or the cancelled run)
      ->  a duplicated row appended: the run fails on validation, nothing written, `latest`
          unchanged, a second notification (Failed)
      ->  adhoc: a second run created while one runs waits (AwaitingConcurrencySlot), then
          completes (ENQUEUE)
      ->  night 2 solved no cell (point-in-time cache keys; 20 days open no window).

The clone holds COMMITTED code only: commit before running this test.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e_stack import REPO, _run
from tests.test_deployments_e2e import _client

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(1500)]

# The smallest grid that still has a failable strategy; anchored windows come from
# configs/nightly.toml ([windows] start), train/test/step shortened for speed.
GRID = {"engines": ["custom"], "selections": ["all"], "profiles": ["equal_weight", "min_variance"],
        "rebalances": ["window"], "train": 120, "test": 40, "step": 40}
FAULT = "engine:custom/min_variance/all:raise"
FAILED_LINE = "failed all/custom/min_variance [window/custom]: "     # then its reason


class _Webhook:
    """A local webhook receiver: every POST's JSON body, in arrival order."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = _Webhook()
    yield hook
    hook.close()


def _wait(client, run_id, done, what: str, timeout: float = 400, diagnostics=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and done(run.state):
            return run
        time.sleep(0.25)
    raise AssertionError(f"flow run {run_id} never {what}; last {run.state!r}{diagnostics()}")


def _events(url: str) -> list[str]:
    """The server's events, newest first (diagnostics for the automation)."""
    import httpx
    events = httpx.post(f"{url}/events/filter", json={"limit": 200}).json().get("events", [])
    return [f"{e['event']} {e['resource'].get('prefect.resource.id')}" for e in events]


def _final(state):
    return state.is_final()


def _stamp_time(name: str) -> datetime:
    from tournament.run_dirs import STAMP_FORMAT
    return datetime.strptime(name, STAMP_FORMAT)


def test_nightly_deployment_grows_dates_notifies_and_limits_concurrency(deployed_stack,
                                                                         tmp_path, webhook):
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId,
                                                LogFilter, LogFilterFlowRunId, LogFilterLevel)

    from tournament.run_dirs import LATEST, dated_run_dirs

    url, env = deployed_stack.url, deployed_stack.env
    # 1. Deployed from git (the session's stack, tests/e2e_stack.py: the work pool, the
    #    repository variables, `prefect --no-prompt deploy --all`), the prices file, the
    #    data block.
    prices = tmp_path / "feed" / "prices.parquet"
    grow = [sys.executable, str(REPO / "scripts" / "grow_prices.py"), str(prices)]
    _run([*grow, "--init", "300"], env)
    out = _run([sys.executable, "deployments/nightly.py", "data-source",
                "--path", prices.as_uri()], env)          # an fsspec URL (file://)
    assert "saved tournament-data-source/nightly-prices" in out and "299 days" in out, out   # returns
    # 2. The automation, by the documented command, to the local webhook.
    out = _run([sys.executable, "deployments/nightly.py", "automation", "--webhook", webhook.url],
               env)
    assert "automation nightly-failures" in out, out

    # 3. A process worker in its own venv, from an empty directory (no project on its path):
    #    the stack's (tests/e2e_stack.py DeployedStack.worker), started on first use.
    worker_log = deployed_stack.worker()

    def diagnostics() -> str:
        return f"\n--- worker log ---\n{worker_log.read_text()[-6000:]}"

    root = tmp_path / "nightly"
    params = {"fidelity": "low", "overrides": GRID, "out": str(root),
              "result_storage": str(tmp_path / "cache"), "num_cpus": 2}
    with _client(url) as client:
        nightly = client.read_deployment_by_name("tournament/nightly")
        adhoc = client.read_deployment_by_name("tournament/adhoc")
        assert nightly.global_concurrency_limit.limit == adhoc.global_concurrency_limit.limit == 1
        assert nightly.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        assert adhoc.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert nightly.parameters["dated_run_dirs"] is True
        assert nightly.parameter_openapi_schema["properties"]["timeout_seconds"]["default"] == 21600

        def night(extra=None, job_variables=None):
            run = client.create_flow_run_from_deployment(
                nightly.id, parameters={**params, **(extra or {})}, job_variables=job_variables)
            return run

        # 4. Night 1 and night 2 (the file grown by 20 days in between).
        manifests = []
        for n_days in (300, 320):
            if n_days != 300:
                _run([*grow, "--append", str(n_days - 300)], env)
            run = _wait(client, night().id, _final, "finished", diagnostics=diagnostics)
            assert run.state.is_completed() and run.state.name == "Completed", (
                f"{run.state!r}" + diagnostics())
            newest = dated_run_dirs(root)[-1]
            # Stamped with the moment a manual run starts (seconds resolution, UTC).
            assert abs(_stamp_time(newest.name) - run.start_time.replace(tzinfo=None)) \
                < timedelta(seconds=30), (newest.name, run.start_time)
            assert (root / LATEST).resolve() == newest.resolve()
            manifest = json.loads((root / LATEST / "manifest.json").read_text())
            assert manifest["data"]["days"] == n_days - 1        # returns of the whole file
            assert manifest["config"]["windows"]["start"] == "2018-03-26"   # anchored
            manifests.append(manifest)
        assert len(dated_run_dirs(root)) == 2

        # 5. Night 3 with a failing strategy; a nightly run created while it runs: Cancelled.
        third = night({"keep_run_dirs": 2, "overrides": {**GRID, "on_infeasible": "fail"}},
                      job_variables={"env": {"TOURNAMENT_FAULTS": FAULT}})
        _wait(client, third.id, lambda s: s.is_running(), "ran", diagnostics=diagnostics)
        collider = night()
        collided = _wait(client, collider.id, _final, "finished", timeout=120,
                         diagnostics=diagnostics)
        assert collided.state.is_cancelled(), f"{collided.state!r}" + diagnostics()
        assert "concurrency limit" in (collided.state.message or "")
        third = _wait(client, third.id, _final, "finished", diagnostics=diagnostics)
        assert third.state.is_completed() and third.state.name == "CompletedWithFailures", (
            f"{third.state!r}" + diagnostics())
        assert third.state.message.startswith("1 failed strategies")
        failed, deadline = [], time.monotonic() + 60
        while not failed and time.monotonic() < deadline:   # logs are shipped in batches
            warnings = client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[third.id]), level=LogFilterLevel(ge_=30)))
            failed = [w.message for w in warnings if w.message.startswith("failed ")]
            time.sleep(0 if failed else 1)
        assert len(failed) == 1 and failed[0].startswith(FAILED_LINE), failed
        assert "injected solver failure" in failed[0]
        summary = next(a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[third.id]))) if a.key == "nightly-summary")
        assert "1 failed strategies" in summary.data and "injected solver failure" in summary.data
        # Retention kept the newest two; `latest` is night 3 (complete, with failures).
        kept = dated_run_dirs(root)
        assert len(kept) == 2 and (root / LATEST).resolve() == kept[-1].resolve()

        # 6. The automation: exactly one notification, for night 3 (not for the completed
        #    nights, not for the cancelled run).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not webhook.received:
            time.sleep(0.2)
        first_seen = time.monotonic()
        assert len(webhook.received) == 1, (webhook.received, _events(url))
        assert str(third.id) in webhook.received[0]["body"]
        assert "CompletedWithFailures" in webhook.received[0]["subject"]

        # 7. A bad night: the feed appends a row it already had. The run fails on validation
        #    before anything is computed or written: no new directory, `latest` unchanged,
        #    and the automation notifies (Failed).
        import pandas as pd
        frame = pd.read_parquet(prices)
        pd.concat([frame, frame.tail(1)]).to_parquet(prices, index=False)
        before = (dated_run_dirs(root), (root / LATEST).resolve())
        bad = _wait(client, night().id, _final, "finished", diagnostics=diagnostics)
        assert bad.state.is_failed() and "duplicate date" in bad.state.message, bad.state
        assert (dated_run_dirs(root), (root / LATEST).resolve()) == before
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(webhook.received) < 2:
            time.sleep(0.2)
        # A duplicate of night 3's notification would have arrived within 5 s of the first
        # (the bad night's run takes longer than that; wait out the rest if it did not): it
        # would show here as a third notification or as the second one.
        time.sleep(max(0.0, first_seen + 5 - time.monotonic()))
        assert len(webhook.received) == 2, (webhook.received, _events(url))
        assert str(bad.id) in webhook.received[1]["body"]
        assert "Failed" in webhook.received[1]["subject"]

        # 8. Adhoc: a second run while one runs waits for the slot, then completes.
        grow_clean = tmp_path / "adhoc-prices.parquet"
        frame.to_parquet(grow_clean, index=False)
        adhoc_params = {"overrides": GRID, "data": str(grow_clean), "result_storage":
                        str(tmp_path / "cache"), "num_cpus": 2, "fidelity": "low"}
        first = client.create_flow_run_from_deployment(
            adhoc.id, parameters={**adhoc_params, "out": str(tmp_path / "adhoc-1")})
        _wait(client, first.id, lambda s: s.is_running(), "ran", diagnostics=diagnostics)
        second = client.create_flow_run_from_deployment(
            adhoc.id, parameters={**adhoc_params, "out": str(tmp_path / "adhoc-2")})
        for run_id in (first.id, second.id):
            run = _wait(client, run_id, _final, "finished", diagnostics=diagnostics)
            assert run.state.is_completed(), f"{run.state!r}" + diagnostics()
        waited = [s.name for s in client.read_flow_run_states(second.id)]
        assert "AwaitingConcurrencySlot" in waited, waited

    # 9. Growing the file recomputed less than the first night (point-in-time cache keys:
    #    20 new days open no window here, so no cell is solved again).
    first_cache, second_cache = (m["cache"] for m in manifests)
    computed = [c["stage1"]["computed"] for c in (first_cache, second_cache)]
    assert computed[1] == 0 < computed[0], (first_cache, second_cache)
