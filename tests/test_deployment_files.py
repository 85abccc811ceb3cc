"""Structural checks of deployments/: the SkyPilot task YAML and its docs.

No SkyPilot install (its schema package is large and needs cloud SDKs): the checks are what a
launch depends on and what review would catch: required keys, the install from
constraints.txt, a Ray head + workers, the tournament attached to that head with S3 result
storage, and no literal secrets.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SKY = REPO / "deployments" / "skypilot" / "ray-cluster.yaml"
SECRET_WORDS = ("secret", "password", "passwd", "token", "api_key", "apikey", "access_key",
                "private_key", "credential")


@pytest.fixture(scope="module")
def task() -> dict:
    return yaml.safe_load(SKY.read_text())


def test_required_keys_and_types(task):
    for key in ("resources", "num_nodes", "setup", "run", "envs"):
        assert key in task, key
    assert isinstance(task["num_nodes"], int) and task["num_nodes"] >= 2
    assert isinstance(task["resources"], dict)
    cpus = str(task["resources"]["cpus"])
    assert re.fullmatch(r"\d+\+?", cpus) and int(cpus.rstrip("+")) >= 8
    assert isinstance(task["setup"], str) and isinstance(task["run"], str)
    assert isinstance(task["envs"], dict)
    assert task.get("workdir") == "."          # the repository is synced to every node
    known = {"name", "num_nodes", "resources", "workdir", "envs", "secrets", "setup", "run",
             "file_mounts", "service", "config", "volumes"}
    assert set(task) <= known, set(task) - known


def test_setup_installs_the_project_with_constraints(task):
    setup = task["setup"]
    assert re.search(r"pip install\b[^\n]*-c constraints\.txt[^\n]*-e \.", setup), setup
    assert "s3fs" in setup                     # s3:// result storage needs it (not in pyproject)
    assert "3.11" in setup                     # the project requires Python 3.11


def test_run_starts_ray_head_and_workers_then_the_tournament_on_the_head(task):
    run = task["run"]
    assert "ray start --head" in run and "--port" in run
    assert re.search(r"ray start --address\b", run)                     # workers join
    for var in ("SKYPILOT_NODE_RANK", "SKYPILOT_NODE_IPS"):
        assert var in run, var
    head, _, workers = run.partition("else")
    assert "tournament run --ray-address" in head and "tournament run" not in workers
    assert "127.0.0.1:$RAY_PORT" in head or "127.0.0.1:6379" in head
    assert "--fidelity high" in head
    assert re.search(r"--result-storage \"?s3://\$\{?RESULT_BUCKET", head)
    assert "RESULT_BUCKET" in task["envs"]
    assert str(task["envs"].get("RAY_PORT", "6379")) != "6380"          # SkyPilot's own Ray
    assert not re.search(r"(^|[;&|]\s*)ray stop\b", run, re.M)          # would stop every Ray


def test_ray_auth_env_reaches_every_process(task):
    envs = task["envs"]
    assert envs.get("RAY_AUTH_MODE") == "token"          # envs apply to setup/run on all nodes
    assert "RAY_AUTH_TOKEN" in (task.get("secrets") or {})


def _walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, str(i)))
    else:
        yield path, node


def test_no_literal_secrets(task):
    for path, value in _walk(task):
        key = path[-1].lower() if path else ""
        if any(word in key for word in SECRET_WORDS):
            assert value in (None, ""), f"{'.'.join(path)} has a literal value"
    for name, value in (task.get("secrets") or {}).items():
        assert value in (None, ""), f"secrets.{name} must be passed with --secret, not written"
    text = SKY.read_text()
    assert not re.search(r"AWS_SECRET|AKIA[0-9A-Z]{16}|aws_secret_access_key", text, re.I)
    assert not re.search(r"\b[0-9a-f]{64}\b", text)      # no pasted Ray auth token


def test_scripts_are_valid_bash(task):
    for key in ("setup", "run"):
        proc = subprocess.run(["bash", "-n"], input=task[key], text=True, capture_output=True)
        assert proc.returncode == 0, f"{key}: {proc.stderr}"


def test_docs_explain_launch_storage_and_work_pool():
    readme = (REPO / "deployments" / "skypilot" / "README.md").read_text()
    assert "sky launch -c tournament deployments/skypilot/ray-cluster.yaml" in readme
    assert "--env RESULT_BUCKET=" in readme
    assert "s3fs" in readme and "RAY_AUTH_MODE=token" in readme
    assert "work pool" in readme.lower() or "work-pool" in readme.lower()
    assert "ray_address" in readme and "result_storage" in readme
    index = (REPO / "deployments" / "README.md").read_text()
    assert "skypilot/ray-cluster.yaml" in index and "skypilot/README.md" in index
