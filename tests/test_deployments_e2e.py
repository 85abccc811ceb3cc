"""End to end through a real Prefect server: prefect.yaml deployments pulling the code from
git, a process worker on another working directory and Python environment, blocks and the
run's artifacts.

    server (isolated PREFECT_HOME)  ->  work pool  ->  bare git repository with this
      checkout's HEAD (file:// URL)  ->  variables tournament_repository / tournament_branch
      ->  `prefect --no-prompt deploy --all`  ->  nightly has an upcoming SCHEDULED run
      ->  blocks register/save/load/resolve
      ->  worker: its own venv (the shared site-packages on its path, but NOT this project),
          started in an empty directory, no PYTHONPATH
      ->  `prefect deployment run tournament/quick --watch`: the run clones the repository
          (git_clone), changes into the clone, pip-installs it into the worker's venv
          (offline: PIP_NO_DEPS=1; the build backend comes from the machine's pip config)
      ->  flow run Completed, run directory written, `quick-leaderboard` + `quick-summary`
          artifacts on the run, and the code that ran is the clone's (its bytecode, the
          venv's editable install pointing at it).

The clone holds COMMITTED code only (HEAD is pushed): commit before running this test.
The server, the deployment from git and the worker are the session's `deployed_stack`
(tests/e2e_stack.py, shared with tests/test_nightly_e2e.py): it starts them in their own
process groups and stops exactly those, by PID. No other process is touched.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from tests.e2e_stack import BRANCH, POOL, PREFECT, REPO, _editable_files, _run

pytestmark = [pytest.mark.server, pytest.mark.timeout(700)]

TINY_GRID = {"engines": ["custom"], "selections": ["all"],
             "profiles": ["equal_weight", "min_variance"], "rebalances": ["window"]}


def _client(url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Ctx:
        def __enter__(self):
            self._settings = temporary_settings(updates={PREFECT_API_URL: url})
            self._settings.__enter__()
            self._client = get_client(sync_client=True)
            return self._client.__enter__()

        def __exit__(self, *exc):
            try:
                self._client.__exit__(*exc)
            finally:
                self._settings.__exit__(*exc)
    return _Ctx()


def _deployment_runs(client, deployment_id, state_types=None):
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId,
                                                FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)
    flow_filter = None
    if state_types:
        flow_filter = FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=list(state_types))))
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=flow_filter)


BLOCKS_SCRIPT = r"""
import json, sys
from blocks.tournament_blocks import (ComputeBlock, DataSourceBlock, TournamentGridBlock,
                                      resolve_blocks)
TournamentGridBlock(engines=["custom"], selections=["all"], fidelity="low", train=120,
                    max_weight=0.5).save("e2e-grid", overwrite=True)
DataSourceBlock(kind="sp500", days=300).save("e2e-data", overwrite=True)
ComputeBlock(num_cpus=2, result_storage="/tmp/x").save("e2e-compute", overwrite=True)
print("RESOLVED " + json.dumps(resolve_blocks("e2e-grid", "e2e-data", "e2e-compute"), sort_keys=True))
"""


PUBLISH_SCRIPT = r"""
import sys
from prefect import flow
from prefect.runtime import flow_run
from tasks.artifacts import publish_artifacts

@flow(name="publish-check")
def publish_check(run_dir: str) -> str:
    out = publish_artifacts(run_dir, key_prefix="E2E check")
    assert out["report"].endswith("report.html")
    return flow_run.id

print("FLOW_RUN " + publish_check(sys.argv[1]))
"""


def test_deployments_end_to_end(deployed_stack, tmp_path):
    from prefect.client.schemas.objects import StateType

    stack = deployed_stack
    url, env = stack.url, stack.env
    t0 = time.monotonic()

    # 1. Work pool, the git source as variables, every deployment in prefect.yaml
    #    (the stack ran them: tests/e2e_stack.py DeployedStack.deploy).
    out = stack.deploy_output
    for name in ("nightly", "adhoc", "quick"):
        assert f"tournament/{name}" in out, out[-3000:]

    # 2. The nightly cron schedule produced upcoming runs; deployments are on the pool.
    with _client(url) as client:
        deps = {n: client.read_deployment_by_name(f"tournament/{n}")
                for n in ("nightly", "adhoc", "quick")}
        for name, dep in deps.items():
            assert dep.work_pool_name == POOL, name
            assert dep.entrypoint == "flows.tournament_flow:tournament"
            steps = [next(iter(step)) for step in dep.pull_steps]
            assert steps == ["prefect.deployments.steps.git_clone",
                             "prefect.deployments.steps.set_working_directory",
                             "prefect.deployments.steps.pip_install_requirements"], steps
            clone = dep.pull_steps[0]["prefect.deployments.steps.git_clone"]
            # Templates kept: the variables are read when each flow run starts.
            assert clone["repository"] == "{{ prefect.variables.tournament_repository }}"
            assert clone["branch"] == "{{ prefect.variables.tournament_branch }}"
        # A typed UI form: the schema read back from the API has choices for fidelity and
        # every grid axis, block pickers and a description on every parameter.
        from tests.test_typed_ui import assert_typed_schema
        for name, dep in deps.items():
            assert_typed_schema(dep.parameter_openapi_schema)
            assert dep.enforce_parameter_schema, name
            # Block-provided values are left unset, so a picked block's values show through;
            # what makes a deployment what it is lives in its config file.
            preset = {k for k, v in dep.parameters.items() if v is not None}
            assert not preset & {"fidelity", "data", "days", "data_kind", "overrides",
                                 "ray_address", "result_storage", "num_cpus"}, (name, preset)
        assert deps["nightly"].parameters["config_path"] == "configs/nightly.toml"
        assert deps["quick"].parameters["config_path"] == "configs/quick.toml"
        assert deps["nightly"].schedules and deps["nightly"].schedules[0].schedule.cron == "0 2 * * *"
        assert not deps["quick"].schedules
        deadline = time.monotonic() + 60
        scheduled = []
        while time.monotonic() < deadline and not scheduled:
            scheduled = _deployment_runs(client, deps["nightly"].id, [StateType.SCHEDULED])
            if not scheduled:
                time.sleep(1)
        assert scheduled, "nightly deployment has no upcoming scheduled run"
        assert all(r.expected_start_time.hour == 2 and r.expected_start_time.minute == 0
                   for r in scheduled)
        # The worker below must never pick up a (high fidelity) nightly run: pause the
        # deployment and drop its upcoming runs.
        client.pause_deployment(deps["nightly"].id)
        for r in _deployment_runs(client, deps["nightly"].id, [StateType.SCHEDULED]):
            client.delete_flow_run(r.id)

    # 3. Blocks: register the types, save, load by name, resolve to flow kwargs.
    _run([*PREFECT, "block", "register", "-m", "blocks.tournament_blocks"], env)
    out = _run([sys.executable, "-c", BLOCKS_SCRIPT], env)
    resolved = json.loads(next(line for line in out.splitlines() if line.startswith("RESOLVED "))[9:])
    assert resolved == {
        "fidelity": "low", "data": "sp500", "days": 300, "data_kind": "prices",
        "ray_address": None, "result_storage": "/tmp/x", "num_cpus": 2,
        "overrides": {"engines": ["custom"], "selections": ["all"], "train": 120,
                      "max_weight": 0.5}}

    # 4. A process worker in its own venv and an empty directory (no PYTHONPATH, not the
    #    repo), then the quick deployment on a tiny grid: it clones, installs, runs.
    #    The stack's worker (tests/e2e_stack.py DeployedStack.worker) asserts that its venv
    #    does not import the project before it starts, and records the shared environment's
    #    editable-install files as they were before any flow run.
    worker_log = stack.worker()
    worker_site, shared_site, shared_before = (stack.worker_site, stack.shared_site,
                                               stack.shared_before)
    worker_home = stack.worker_home
    run_dir = tmp_path / "run"
    # The data source as the UI passes a picked block: a reference the server validates
    # against the schema and the flow loads (days=300 from the block, no days parameter).
    params = {"out": str(run_dir), "result_storage": str(tmp_path / "cache"),
              "overrides": TINY_GRID, "num_cpus": 2,
              "data_source": {"$ref": {"block_document_slug": "tournament-data-source/e2e-data"}}}
    t_trigger = time.monotonic()
    # The process worker runs each flow run in a temporary directory it deletes afterwards;
    # a fixed working_dir keeps the clone for the checks in step 6.
    flow_runs_dir = worker_home / "flow-runs"
    flow_runs_dir.mkdir()
    proc = subprocess.run([*PREFECT, "deployment", "run", "tournament/quick",
                           "--params", json.dumps(params),
                           "--job-variable", f"working_dir={json.dumps(str(flow_runs_dir))}",
                           "--watch",
                           "--watch-timeout", "300"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=330,
                          start_new_session=True)
    trigger_seconds = time.monotonic() - t_trigger
    watch_out = proc.stdout + proc.stderr

    def diagnostics() -> str:
        return (f"\n--- deployment run (exit {proc.returncode}) ---\n{watch_out[-3000:]}"
                f"\n--- worker log ---\n{worker_log.read_text()[-6000:]}")

    with _client(url) as client:
        runs = _deployment_runs(client, deps["quick"].id)
        assert len(runs) == 1, diagnostics()
        run = runs[0]
        assert run.state is not None and run.state.is_completed(), (
            f"quick run state {run.state!r}" + diagnostics())
        assert run.parameters["overrides"] == TINY_GRID
        assert run.name == "quick low sp500 300d", run.name       # <deployment> <fidelity> <data> <days>
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["data"]["days"] == 300                    # the picked block's value
        assert manifest["config"]["engines"] == ["custom"]        # TINY_GRID over configs/quick.toml

        # The run directory was written where the parameters said.
        for name in ("results.parquet", "returns.parquet", "cells.parquet", "manifest.json"):
            assert (run_dir / name).is_file(), name + diagnostics()

        # 5a. publish_artifacts itself, inside a tiny flow, on that run directory.
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        def run_artifacts(flow_run_id):
            return client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

        copy_dir = tmp_path / "published"
        shutil.copytree(run_dir, copy_dir)
        (copy_dir / "report.html").unlink(missing_ok=True)
        out = _run([sys.executable, "-c", PUBLISH_SCRIPT, str(copy_dir)], env, cwd=tmp_path)
        tiny_run_id = next(line for line in out.splitlines() if line.startswith("FLOW_RUN "))[9:]
        tiny = {(a.type, a.key) for a in run_artifacts(tiny_run_id)}
        assert {("table", "e2e-check-leaderboard"), ("markdown", "e2e-check-summary"),
                ("markdown", "e2e-check-report")} <= tiny, tiny
        assert (copy_dir / "report.html").is_file()

        # 5b. Artifacts of the deployment's flow run (need publish_artifacts in the flow).
        artifacts = run_artifacts(run.id)
        kinds = {a.type: a for a in artifacts}
        by_key = {a.key: a for a in artifacts}
        print(f"\ne2e: deploy+schedule checks {t_trigger - t0:.1f}s, quick run trigger->done "
              f"{trigger_seconds:.1f}s, artifacts {sorted((a.type, a.key) for a in artifacts)}")
        assert "table" in kinds and "markdown" in kinds, (
            "flow run has no table/markdown artifacts: is tasks.artifacts.publish_artifacts "
            f"called at the end of the tournament flow? found {[(a.type, a.key) for a in artifacts]}")
        assert kinds["table"].key == "quick-leaderboard"          # <deployment>-<kind>
        assert {"quick-summary", "quick-report"} <= set(by_key), sorted(by_key)
        assert by_key["quick-summary"].type == by_key["quick-report"].type == "markdown"
        assert kinds["progress"].key == "quick-progress"
        # The report in the UI: the leaderboard and the charts inline (report.html is on
        # the worker's disk).
        assert "](data:image/png;base64," in by_key["quick-report"].data
        table = kinds["table"].data
        table = json.loads(table) if isinstance(table, str) else table
        assert table and {"selection", "engine", "profile", "sharpe"} <= set(table[0])
        assert "## Top" in by_key["quick-summary"].data
        assert (run_dir / "report.html").is_file()

        # 5c. Stage 2 alone from a deployment (what the UI's `simulate` run does): vectorbt
        #     added to the quick run's directory, no Stage 1 cell solved.
        import pandas as pd
        before = pd.read_parquet(run_dir / "results.parquet")
        assert set(before["simulator"]) == {"custom"}
        sim = subprocess.run([*PREFECT, "deployment", "run", "tournament-simulate/simulate",
                              "--params", json.dumps({"run_dir": str(run_dir),
                                                      "simulators": ["vectorbt"]}),
                              "--job-variable", f"working_dir={json.dumps(str(flow_runs_dir))}",
                              "--watch", "--watch-timeout", "300"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=330,
                             start_new_session=True)
        watch_out = sim.stdout + sim.stderr
        sim_dep = client.read_deployment_by_name("tournament-simulate/simulate")
        sim_runs = _deployment_runs(client, sim_dep.id)
        assert len(sim_runs) == 1 and sim_runs[0].state.is_completed(), (
            f"simulate run {sim_runs and sim_runs[0].state!r}" + diagnostics())
        after = pd.read_parquet(run_dir / "results.parquet")
        assert set(after["simulator"]) == {"custom", "vectorbt"}
        # Every strategy row gains a vectorbt twin (the benchmark row is simulator-free).
        assert (after["simulator"] == "vectorbt").sum() == (before["selection"] != "benchmark").sum()
        assert len(after) == len(before) + (after["simulator"] == "vectorbt").sum()
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["cache"]["stage1"]["computed"] == 0, manifest["cache"]
        assert manifest["simulate"][-1]["pairs"] == [[m, "vectorbt"] for m in
                                                     sorted(set(before["rebalance"]))]

    # 6. The code that ran came from the clone: git_clone made <repo>-<branch> in the worker's
    #    directory, the flow's modules were compiled there, and the worker venv's editable
    #    install points at it. The shared environment's install was not touched.
    clone_dir = flow_runs_dir / f"tournament-{BRANCH}"
    assert (clone_dir / ".git").is_dir(), sorted(p.name for p in flow_runs_dir.iterdir())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert subprocess.run(["git", "-C", str(clone_dir), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip() == head
    assert list((clone_dir / "flows" / "__pycache__").glob("tournament_flow.*.pyc"))
    assert list((clone_dir / "tasks" / "__pycache__").glob("stage2.*.pyc"))
    finder = "".join(p.read_text() for p in worker_site.glob("__editable__*portfolio_tournament*"))
    assert str(clone_dir.resolve()) in finder, finder[:500]
    assert _editable_files(shared_site) == shared_before
