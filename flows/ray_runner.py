"""A RayTaskRunner that reaches Ray only on its first submit.

Entering a plain `prefect_ray.RayTaskRunner` calls `ray.init`. A subflow whose chunks are all
in result storage submits nothing to it, so with this runner a warm rerun never starts (or
attaches to) Ray. `ensure_ray` is the run's own start-up: init_ray + worker prewarm + one
`ray.put` of the returns matrix (flows.stage_run.StageRun.ensure_ray).
"""
from __future__ import annotations

from prefect.task_runners import TaskRunner
from prefect_ray import RayTaskRunner


class LazyRayTaskRunner(RayTaskRunner):
    def __init__(self, *, ensure_ray=None, **kwargs):
        super().__init__(**kwargs)
        self._ensure_ray = ensure_ray

    def duplicate(self):
        return type(self)(ensure_ray=self._ensure_ray, address=self.address,
                          init_kwargs=self.init_kwargs)

    def __enter__(self):
        TaskRunner.__enter__(self)      # skip RayTaskRunner's eager ray.init
        self._owns_ray = False
        return self

    def submit(self, *args, **kwargs):
        if self._ensure_ray is not None:
            self._ensure_ray()
        return super().submit(*args, **kwargs)
