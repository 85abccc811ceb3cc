"""Publish a finished run directory: report.html on disk, plus Prefect artifacts.

    publish_artifacts(out_dir)             # at the end of the parent `tournament` flow

creates, linked to the current flow run:
  * table artifact    `<prefix>-leaderboard`  top strategies by Sharpe + baselines
  * markdown artifact `<prefix>-summary`      failed strategies (if any) with their reasons,
                                              summary, top strategies, failures, agreement
  * markdown artifact `<prefix>-report`       the report in the UI: leaderboard and the
                                              charts as inline images (data: URIs)
where <prefix> is the deployment's name (`quick-leaderboard`, `nightly-report`) or `cli` for
runs outside a deployment, so deployments never overwrite each other's latest artifact.
(The progress artifact, flows/progress.py, is `<prefix>-progress`.) Artifact keys are
lowercase letters, digits and single dashes.

It writes `report.html` (self-contained) into the run directory first, so the report exists
even when the API is unreachable. That file is on the worker's disk, which the UI cannot
reach; the `-report` artifact is what the UI shows. Prefect 3.9's UI renders markdown
artifacts with its own renderer (prefect-design's PMarkdownRenderer: an image token becomes
an `<img src>` as given, no sanitising of data: URIs, no CSP on the UI's page), so
`![alt](data:image/png;base64,...)` displays inline. Charts beyond REPORT_IMAGE_BUDGET
bytes are listed by name instead (report.html has all of them).
"""
from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

from tournament.leaderboard import leaderboard_columns, leaderboard_frame
from tournament.report import (chart_images, confidence_view, leaderboard_table, load_run,
                               markdown_summary, write_report)
from tournament.outputs import failed_strategy_lines
from tournament.report.format import md, md_table
from tournament.schema import REPORT_HTML

# Total base64 bytes of charts inlined into the `-report` artifact (the API stores the
# markdown in its database and the UI downloads it whole; report.html has every chart).
REPORT_IMAGE_BUDGET = 3_000_000


def artifact_key(prefix: str, name: str) -> str:
    """`prefix-name` reduced to lowercase letters, digits and single dashes."""
    key = re.sub(r"[^a-z0-9]+", "-", f"{prefix}-{name}".lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "tournament"


def current_deployment_name() -> str | None:
    """The running flow run's deployment name; None outside a deployment. A run without a
    deployment costs no API call (prefect.runtime.deployment.name reads the flow run back
    from the API to find out)."""
    from prefect.context import FlowRunContext
    from prefect.runtime import deployment
    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None and ctx.flow_run.deployment_id is None:
        return None
    return deployment.name


def default_key_prefix() -> str:
    """The running deployment's name, or "cli" outside a deployment (slugified later)."""
    return current_deployment_name() or "cli"


def _chart_title(name: str) -> str:
    """`equity/custom` -> `Equity curves (custom)`, `heatmap/all/custom` -> `Sharpe heatmap:
    all (custom)`."""
    parts = name.split("/")
    if parts[0] == "equity" and len(parts) == 2:
        return f"Equity curves ({parts[1]})"
    if parts[0] == "heatmap" and len(parts) == 3:
        return f"Sharpe heatmap: {parts[1]} ({parts[2]})"
    return name


def report_markdown(run_dir: str | Path, charts: dict[str, str], *, top: int = 15,
                    budget: int = REPORT_IMAGE_BUDGET, report_path: str | None = None) -> str:
    """The report for the UI: the confidence sentence, the leaderboard with baselines, and
    every chart as an inline PNG (equity curves first, then the heatmaps) while they fit in
    `budget` base64 bytes; the rest are named, with where report.html is."""
    run = load_run(run_dir)
    results, man = run["results"], run["manifest"]
    out = [f"# Tournament report {man.get('run_id') or Path(run_dir).name}", ""]
    conf = confidence_view(run)
    if conf is not None:
        out += [f"**{conf['sentence']}**", ""]
    data = man.get("data") or {}
    if data:
        out += [f"Data: {data.get('source')} {data.get('days')} days x {data.get('assets')} "
                f"assets ({data.get('start')} to {data.get('end')}); fidelity "
                f"{(man.get('config') or {}).get('fidelity')}.", ""]
    out += [f"## Top {top} strategies (Sharpe) and baselines", ""]
    board = leaderboard_frame(results, top=top)
    out.append(md_table(board, leaderboard_columns(results)) if not board.empty
               else "_no ok results_")
    order = sorted(charts, key=lambda n: (not n.startswith("equity/"), n))
    used, omitted = 0, []
    section = None
    for name in order:
        b64 = charts[name]
        if used + len(b64) > budget:
            omitted.append(name)
            continue
        used += len(b64)
        title = "Equity curves" if name.startswith("equity/") else "Sharpe heatmaps"
        if title != section:
            out += ["", f"## {title}", ""]
            section = title
        out += [f"### {_chart_title(name)}", "", f"![{_chart_title(name)}](data:image/png;base64,{b64})", ""]
    if omitted:
        out += ["", f"_{len(omitted)} more charts in report.html: "
                + ", ".join(_chart_title(n) for n in omitted) + "_"]
    where = report_path or str((Path(run_dir) / REPORT_HTML).resolve())
    out += ["", f"Full report (every section and chart): `{where}` on host "
            f"`{socket.gethostname()}`.", ""]
    return "\n".join(out)


def failures_markdown(failures: list[str]) -> str:
    """The failed strategies, one per line with its reason, ahead of the summary (what the
    run's CompletedWithFailures state refers to); "" when none failed."""
    if not failures:
        return ""
    return "\n".join([f"## {len(failures)} failed strategies (run state CompletedWithFailures)",
                      "", *(f"- {md(line)}" for line in failures), "", ""])


def publish_artifacts(run_dir: str, *, key_prefix: str | None = None, top: int = 20,
                      charts: dict[str, str] | None = None) -> dict[str, Any]:
    """Write report.html, then create the leaderboard table, the summary markdown and the
    report markdown artifacts (keys `<deployment or cli>-<kind>` unless `key_prefix` is
    given). Returns {"report": path, "table": id, "markdown": id, "report_artifact": id}."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key_prefix = key_prefix or default_key_prefix()
    run = Path(run_dir)
    if charts is None:            # drawn once, for both report.html and the artifact
        loaded = load_run(run)
        charts = (chart_images(loaded["results"], loaded["returns"])
                  if not loaded["results"].empty else {})
    report = write_report(run, charts=charts)
    table = leaderboard_table(run, top=top)
    table_id = create_table_artifact(
        table=table, key=artifact_key(key_prefix, "leaderboard"),
        description=f"Top {top} strategies by Sharpe plus baselines ({run.resolve()})")
    # The confidence-set sentence leads the description too (the UI's artifact list shows it).
    loaded = load_run(run)
    confidence = confidence_view(loaded)
    headline = f"{confidence['sentence']} " if confidence else ""
    failures = failed_strategy_lines(loaded["results"]) if not loaded["results"].empty else []
    if failures:
        headline = f"{len(failures)} failed strategies. {headline}"
    md_id = create_markdown_artifact(
        markdown=failures_markdown(failures) + markdown_summary(run),
        key=artifact_key(key_prefix, "summary"),
        description=f"{headline}Tournament summary; full report: {report.resolve()}")
    report_id = create_markdown_artifact(
        markdown=report_markdown(run, charts, report_path=str(report.resolve())),
        key=artifact_key(key_prefix, "report"),
        description=f"{headline}Leaderboard and charts (report.html: {report.resolve()})")
    return {"report": str(report), "table": str(table_id), "markdown": str(md_id),
            "report_artifact": str(report_id)}
