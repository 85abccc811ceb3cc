"""flows.plan.split_partly_stored: the night's few new cells are packed together; stored
cells are never solved again, whatever chunk they were planned in."""
from __future__ import annotations

from flows.plan import cell_chunk, split_partly_stored
from tournament.cube import Cell


def _chunk(name, windows, profile="min_variance", engine="custom"):
    cells = [Cell(w, "all", engine, profile) for w in windows]
    keys = [f"k-{engine}-{profile}-{w}" for w in windows]
    return cell_chunk(name, cells, keys)


def test_partly_stored_chunks_split_into_one_replay_and_packed_new_cells():
    old = [_chunk(f"all/custom/{p}", range(6), p) for p in ("min_variance", "max_sharpe")]
    grown = [_chunk(f"all/custom/{p}", range(7), p) for p in ("min_variance", "max_sharpe")]
    stored = {k for c in old for k in c.unit_keys}
    out = split_partly_stored(grown, stored.__contains__, n_assets=20)
    replay = [c for c in out if c.name == "stored cells"]
    new = [c for c in out if c.name.startswith("new cells")]
    assert len(out) == 2 and len(replay) == 1 and len(new) == 1
    assert all(stored.__contains__(k) for k in replay[0].unit_keys)
    assert sorted((c.profile, c.window) for c in new[0].members) == [("max_sharpe", 6),
                                                                    ("min_variance", 6)]


def test_chunks_stored_whole_fully_or_not_at_all_are_kept():
    a, b, c = _chunk("a", range(3)), _chunk("b", range(3), "max_sharpe"), _chunk("c", range(2),
                                                                             engine="skfolio")
    stored = {a.key} | set(b.unit_keys)
    assert split_partly_stored([a, b, c], stored.__contains__, n_assets=20) == [a, b, c]


def test_many_new_cells_are_packed_into_chunks_of_about_the_target_cost():
    chunk = _chunk("big", range(400))
    out = split_partly_stored([chunk], {chunk.unit_keys[0]}.__contains__, n_assets=200)
    new = [c for c in out if c.name.startswith("new cells")]
    assert sum(len(c.members) for c in new) == 399 and len(new) == 5   # 84 cells per chunk
