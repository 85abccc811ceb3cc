"""One cell's text, for every view of the report: plain, HTML-escaped, Markdown, JSON-safe."""
from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd

# Columns holding fractions, shown as percentages.
PERCENT = {"cagr", "volatility", "max_drawdown", "total_return", "costs", "mean_return_ann"}


def esc(value: Any) -> str:
    """HTML-escaped text (quotes too: it also goes into attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):   # arrays, lists: not a missing scalar
        return False


def fmt(value: Any, column: str = "") -> str:
    """Plain text for a cell (not escaped); `column` picks percentages and precision."""
    if is_missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if column in PERCENT:
            return f"{v * 100:.2f}%"
        if column.startswith("max rel diff"):
            return f"{v:.2e}" if abs(v) < 1e-3 and v != 0 else f"{v * 100:.3f}%"
        if abs(v) >= 1e4 or (abs(v) < 1e-3 and v != 0):
            return f"{v:.3e}"
        return f"{v:.4f}" if column.endswith("seconds") or abs(v) < 10 else f"{v:.2f}"
    if isinstance(value, pd.Timestamp):
        return str(value.date()) if value == value.normalize() else str(value)
    return str(value)


def json_safe(value: Any) -> Any:
    """A value a Prefect table artifact can hold: no NaN/inf, no numpy scalars."""
    if is_missing(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isinf(v) else round(v, 6)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value if isinstance(value, (int, str, bool)) else str(value)


def md(value: Any, column: str = "") -> str:
    """Markdown text for a cell: escaped, with pipes and newlines that cannot break a table."""
    text = fmt(value, column)
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def md_table(frame: pd.DataFrame, columns: list[str]) -> str:
    cols = [c for c in columns if c in frame.columns]
    lines = ["| " + " | ".join(md(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(md(row[c], c) for c in cols) + " |")
    return "\n".join(lines)


def number(value: Any) -> Any:
    """`value` as a float when it is one (manifest timings may be strings), else as is."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
