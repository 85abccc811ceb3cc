"""Publish a finished run directory: report.html on disk, plus Prefect artifacts.

    publish_artifacts(out_dir)             # at the end of the parent `tournament` flow

creates, linked to the current flow run (or task run, when called as the task):
  * table artifact    `<prefix>-leaderboard`  top strategies by Sharpe + baselines
  * markdown artifact `<prefix>-summary`      summary, top strategies, failures, agreement
and writes `report.html` (self-contained) into the run directory first, so the report exists
even when the API is unreachable. Artifact keys are lowercase letters, digits and dashes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tournament.report import leaderboard_table, markdown_summary, write_report


def artifact_key(prefix: str, name: str) -> str:
    """`prefix-name` reduced to lowercase letters, digits and single dashes."""
    key = re.sub(r"[^a-z0-9]+", "-", f"{prefix}-{name}".lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "tournament"


def publish_artifacts(run_dir: str, *, key_prefix: str = "tournament", top: int = 20
                      ) -> dict[str, Any]:
    """Write report.html, then create the leaderboard table and the summary markdown
    artifacts. Returns {"report": path, "table": artifact id, "markdown": artifact id}."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    run = Path(run_dir)
    report = write_report(run)
    table = leaderboard_table(run, top=top)
    table_id = create_table_artifact(
        table=table, key=artifact_key(key_prefix, "leaderboard"),
        description=f"Top {top} strategies by Sharpe plus baselines ({run.resolve()})")
    md_id = create_markdown_artifact(
        markdown=markdown_summary(run), key=artifact_key(key_prefix, "summary"),
        description=f"Tournament summary; full report: {report.resolve()}")
    return {"report": str(report), "table": str(table_id), "markdown": str(md_id)}


# The same as a Prefect task (own task run in the UI; artifacts linked to it and the flow run).
publish_artifacts_task = task(publish_artifacts, name="publish-artifacts", cache_policy=NO_CACHE)
