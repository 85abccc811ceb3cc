"""Results of single units of work (a Stage 1 cell, a Stage 2 simulation), stored one by one.

A chunk task is cached by its chunk key, but a chunk's membership can change while most of
its units do not (a nightly run appends a window to every strategy's chunk). So each task
also stores every unit it computes under the unit's own cache key (tournament.keys), in the
same result storage as the chunk results (local path, fsspec URL or storage block: the
running task's own), and before computing looks its units up there: only missing units are
computed. With --refresh (the task's `refresh_cache`) nothing is looked up, everything is
computed and stored again.

Keys pass through flows.plan.stored_key, so test-only fault rules separate them too.
"""
from __future__ import annotations

import logging
from typing import Any

from prefect.context import TaskRunContext
from prefect.results import ResultStore

logger = logging.getLogger(__name__)


class UnitStore:
    """The running task's result storage, read and written one unit at a time."""

    def __init__(self, store: ResultStore, *, refresh: bool) -> None:
        self.store, self.refresh = store, refresh

    @classmethod
    def of_running_task(cls) -> "UnitStore":
        ctx = TaskRunContext.get()
        if ctx is None or ctx.result_store is None or ctx.result_store.result_storage is None:
            raise RuntimeError("no result storage for this task: per-unit results need one "
                               "(the tournament flow always sets it)")
        # A store of its own: units are not locked (a unit is computed identically by
        # whoever computes it; the chunk's lock already keeps concurrent runs apart).
        store = ResultStore(result_storage=ctx.result_store.result_storage,
                            serializer=ctx.result_store.serializer)
        return cls(store, refresh=bool(ctx.task.refresh_cache))

    def read(self, key: str) -> Any | None:
        """The stored unit, or None (not stored, --refresh, or unreadable: said, recomputed)."""
        from flows.plan import stored_key
        if self.refresh:
            return None
        name = stored_key(key)
        if not self.store.exists(name):
            return None
        try:
            return self.store.read(name).result
        except Exception as exc:      # noqa: BLE001 - a torn write: recompute and overwrite
            logger.warning("stored unit %s unreadable (%s): computing it again", name, exc)
            return None

    def write(self, key: str, obj: Any) -> None:
        from flows.plan import stored_key
        self.store.write(obj, key=stored_key(key))
