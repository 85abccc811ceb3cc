"""Run progress: a terminal bar, a Prefect progress artifact and tournament_state.json.

The state file is the human/tool-readable summary (never the source of truth for results,
which live in Prefect result storage). It is rewritten atomically after every chunk.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tournament.outputs import write_json
from tournament.schema import FAILED, STATE, UNSUPPORTED


@dataclass
class StageCounts:
    total: int = 0
    done: int = 0
    failed: int = 0
    unsupported: int = 0
    cached: int = 0

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed - self.unsupported

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "done": self.done, FAILED: self.failed,
                UNSUPPORTED: self.unsupported, "pending": self.pending,
                "cached": self.cached}


@dataclass
class RunProgress:
    out_dir: Path
    run_id: str
    info: dict[str, Any]
    stages: dict[str, StageCounts] = field(default_factory=lambda: {
        "stage1": StageCounts(), "stage2": StageCounts()})
    status: str = "running"
    artifact_id: Any = None
    _last_draw: float = 0.0
    _last_artifact: float = float("-inf")
    # The progress artifact is one synchronous API call (~50 ms on this machine, more under
    # load); per chunk it was most of a warm rerun's replay time (46 calls on the large grid).
    # The UI polls it, so at most one update a second, and always the last value.
    ARTIFACT_INTERVAL = 1.0

    def start(self) -> None:
        try:
            from prefect.artifacts import create_progress_artifact

            from tasks.artifacts import artifact_key, default_key_prefix
            self.artifact_id = create_progress_artifact(
                progress=0.0, key=artifact_key(default_key_prefix(), "progress"),
                description="Share of Stage 1 cells and Stage 2 simulations finished")
        except Exception:   # no flow run context (plain call): the bar and file still work
            self.artifact_id = None
        self.write()

    def record(self, stage: str, *, done=0, failed=0, unsupported=0, cached=0) -> None:
        counts = self.stages[stage]
        counts.done += done
        counts.failed += failed
        counts.unsupported += unsupported
        counts.cached += cached
        self.write()
        self._draw()

    @property
    def fraction(self) -> float:
        total = sum(c.total for c in self.stages.values())
        left = sum(c.pending for c in self.stages.values())
        return 1.0 if total == 0 else (total - left) / total

    def write(self, final: bool = False) -> None:
        write_json(self.out_dir / STATE, {
            "run_id": self.run_id, "status": self.status,
            "updated_at": datetime.now(timezone.utc).isoformat(),
            "stages": {k: v.as_dict() for k, v in self.stages.items()}, **self.info},
            durable=final)
        now = time.monotonic()
        if self.artifact_id is not None and (
                final or now - self._last_artifact >= self.ARTIFACT_INTERVAL):
            self._last_artifact = now
            try:
                from prefect.artifacts import update_progress_artifact
                update_progress_artifact(self.artifact_id, progress=round(100 * self.fraction, 1))
            except Exception:
                pass

    def finish(self, status: str) -> None:
        self.status = status
        self.write(final=True)
        self._draw(final=True)

    def _draw(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        width = 30
        filled = int(width * self.fraction)
        s1, s2 = self.stages["stage1"], self.stages["stage2"]
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {100 * self.fraction:5.1f}%  "
                f"stage1 {s1.total - s1.pending}/{s1.total} cells  "
                f"stage2 {s2.total - s2.pending}/{s2.total} sims")
        if sys.stderr.isatty():
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        elif final:   # logs and CI: one summary line, not a line per chunk
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
