"""What every CLI benchmark needs: an environment of its own and services it starts and
stops itself, so a measurement never attaches to, or leaves behind, anything else.

* `isolated_env(work, attach=...)`: no inherited PREFECT_API_URL/PREFECT_UI_URL, a private
  PREFECT_HOME and services directory under `work`, the repo's numba cache; `attach=False`
  adds TOURNAMENT_NO_ATTACH (temporary services per run), `attach=True` drops it (runs use
  the services `services_up` started).
* `services_up(env, work, prefect_port, ray_port)`: `tournament up` ... `tournament down`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "flows.cli"]


def isolated_env(work: Path, *, attach: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_UI_URL", "TOURNAMENT_NO_ATTACH")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO),
               NUMBA_CACHE_DIR=str(REPO / ".numba-cache"),
               TOURNAMENT_SERVICES_DIR=str(work / "services"),
               PREFECT_HOME=str(work / "prefect-home"))
    if not attach:
        env["TOURNAMENT_NO_ATTACH"] = "1"
    return env


@contextmanager
def services_up(env: dict[str, str], work: Path, *, prefect_port: int, ray_port: int,
                timings: dict | None = None):
    """`tournament up` on these ports for the block, `tournament down` after it; their wall
    seconds go into `timings` ("up_seconds", "down_seconds") when given."""
    timings = {} if timings is None else timings
    t0 = time.time()
    up = subprocess.run(CLI + ["up", "--prefect-port", str(prefect_port), "--ray-port",
                               str(ray_port)], env=env, cwd=work, capture_output=True, text=True)
    timings["up_seconds"] = time.time() - t0
    if up.returncode != 0:
        raise RuntimeError(up.stderr)
    try:
        yield
    finally:
        t0 = time.time()
        subprocess.run(CLI + ["down"], env=env, cwd=work, capture_output=True)
        timings["down_seconds"] = time.time() - t0
