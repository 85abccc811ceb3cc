"""Self-contained HTML report (and Markdown / table summaries) for one run directory.

Reads only the run directory files (results.parquet, returns.parquet, cells.parquet,
manifest.json, tournament_state.json); every file is optional, so a partial run still gets a
report. Pure core code: no Prefect, no Ray (tasks/artifacts.py publishes these as Prefect
artifacts).

  load.py      the run directory's files
  frames.py    the sections' tables (pure pandas; the leaderboard is tournament.leaderboard)
  format.py    one cell's text: plain, HTML, Markdown, JSON-safe
  charts.py    equity curves and Sharpe heatmaps (matplotlib, base64 PNGs)
  html.py      report.html, one function per section; report.css is its stylesheet
  markdown.py  the Markdown summary and the leaderboard's JSON rows
"""
from .charts import chart_images
from .frames import agreement_frame, confidence_view
from .html import render_html, write_report
from .load import load_run
from .markdown import leaderboard_table, markdown_summary

__all__ = ["agreement_frame", "chart_images", "confidence_view", "leaderboard_table",
           "load_run", "markdown_summary", "render_html", "write_report"]
