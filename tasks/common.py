"""Shared task plumbing: explicit cache keys and an optional execution log for audits."""
from __future__ import annotations

import json
import os
import time


def key_from_parameters(context, parameters) -> str:
    """cache_key_fn: the key was computed by the flow from named parts (never from arrays)."""
    return parameters["cache_key"]


def log_execution(kind: str, cache_key: str, count: int) -> None:
    """Append one line per real execution (not cache hit) when TOURNAMENT_EXECUTION_LOG is set.

    Tests and benchmarks count solver calls and simulations this way across Ray workers.
    """
    path = os.environ.get("TOURNAMENT_EXECUTION_LOG")
    if not path:
        return
    line = json.dumps({"kind": kind, "key": cache_key, "count": count, "pid": os.getpid(),
                       "node": _ray_node_id(), "time": time.time()})
    with open(path, "a") as fh:   # O_APPEND lines < PIPE_BUF are atomic on Linux
        fh.write(line + "\n")


def injected_delay() -> None:
    """Sleep TOURNAMENT_TASK_DELAY seconds at task start (fault-injection tests use it to
    kill a run mid-stage deterministically). Unset in normal runs."""
    delay = float(os.environ.get("TOURNAMENT_TASK_DELAY", "0") or 0)
    if delay > 0:
        time.sleep(delay)


def _ray_node_id() -> str | None:
    try:
        import ray
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None
