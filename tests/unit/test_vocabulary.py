"""The vocabulary is defined once (issue 13): reading the source, not running it.

* result, path, cell and strategy key lists, status strings and run-directory file names
  appear as literals only in tournament/schema.py;
* the CLI, the report and the artifacts build the leaderboard through the one function,
  tournament.leaderboard.leaderboard_frame, and nothing else sorts results into a board.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tournament import schema

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tournament", "flows", "tasks", "blocks")
SCHEMA = REPO / "tournament" / "schema.py"

STATUSES = set(schema.STATUSES)
FILE_NAMES = {schema.CUBE_PICKLE, schema.CUBE_WEIGHTS, schema.CELLS, schema.RESULTS,
              schema.RETURNS, schema.MANIFEST, schema.CACHE_KEYS, schema.STATE, schema.LEDGER,
              schema.REPORT_HTML}
KEY_LISTS = {tuple(schema.STRATEGY_KEYS), tuple(schema.CELL_KEYS), tuple(schema.PATH_KEYS),
             tuple(schema.RESULT_KEYS)}


def sources():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path != SCHEMA:
                yield path, ast.parse(path.read_text(), filename=str(path))


def _docstring_nodes(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_statuses_file_names_and_key_lists_are_spelt_only_in_the_schema():
    found = []
    for path, tree in sources():
        docs = _docstring_nodes(tree)
        rel = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docs:
                if node.value in STATUSES or node.value in FILE_NAMES:
                    found.append(f"{rel}:{node.lineno}: {node.value!r}")
            elif isinstance(node, (ast.List, ast.Tuple)) and node.elts and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                values = tuple(e.value for e in node.elts)
                if values in KEY_LISTS:
                    found.append(f"{rel}:{node.lineno}: key list {list(values)}")
    assert not found, "spell these through tournament.schema:\n" + "\n".join(found)


def _calls(tree, name: str) -> bool:
    return any(isinstance(n, ast.Call) and (getattr(n.func, "id", None) == name
                                            or getattr(n.func, "attr", None) == name)
               for n in ast.walk(tree))


def test_cli_report_and_artifacts_use_the_one_leaderboard_function():
    trees = dict((p.relative_to(REPO).as_posix(), t) for p, t in sources())
    board = trees["tournament/leaderboard.py"]
    # The CLI prints leaderboard_text, which is built on leaderboard_frame.
    text_fn = next(n for n in board.body if isinstance(n, ast.FunctionDef)
                   and n.name == "leaderboard_text")
    assert _calls(text_fn, "leaderboard_frame")
    assert _calls(trees["flows/cli.py"], "leaderboard_text")
    for consumer in ("tournament/report/frames.py", "tournament/report/markdown.py",
                     "tasks/artifacts.py"):
        assert _calls(trees[consumer], "leaderboard_frame"), consumer
    # No other module defines a leaderboard builder of its own.
    builders = [f"{rel}:{n.lineno} {n.name}" for rel, t in trees.items()
                if rel != "tournament/leaderboard.py" for n in ast.walk(t)
                if isinstance(n, ast.FunctionDef)
                and n.name in ("leaderboard", "leaderboard_frame", "build_leaderboard")]
    assert not builders, builders
