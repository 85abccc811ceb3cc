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


def test_a_nights_new_cells_are_dealt_to_every_worker():
    """34 new cells at 200 assets fit one chunk by cost (84 per chunk); with 2 workers they
    go into 2 chunks dealt round-robin, so both workers solve and each gets both engines."""
    old = [_chunk(f"all/{e}/min_variance", range(17), engine=e) for e in ("custom", "skfolio")]
    grown = [_chunk(f"all/{e}/min_variance", range(34), engine=e) for e in ("custom", "skfolio")]
    stored = {k for c in old for k in c.unit_keys}
    out = split_partly_stored(grown, stored.__contains__, n_assets=200, workers=lambda: 2)
    new = [c for c in out if c.name.startswith("new cells")]
    assert [len(c.members) for c in new] == [17, 17]
    assert all({m.engine for m in c.members} == {"custom", "skfolio"} for c in new)
    assert sorted(k for c in new for k in c.unit_keys) == sorted(
        k for c in grown for k in c.unit_keys if k not in stored)
    # one cell to solve: one chunk, whatever the workers; none: no chunk, workers not asked
    one = split_partly_stored([_chunk("x", range(3))], {"k-custom-min_variance-0",
                                                       "k-custom-min_variance-1"}.__contains__,
                              n_assets=200, workers=lambda: 8)
    assert [len(c.members) for c in one if c.name.startswith("new cells")] == [1]

    def never():
        raise AssertionError("workers asked with nothing to solve")
    assert split_partly_stored(old, stored.__contains__, n_assets=200, workers=never) == old


def _sim_chunks(rebalance, simulator, groups):
    from flows.plan import SimulationChunk
    out = []
    for sel, names in groups.items():
        members = [(sel, "custom", n) for n in names]
        units = [f"u-{rebalance}-{simulator}-{sel}-{n}" for n in names]
        out.append(SimulationChunk(f"{rebalance}/{simulator}/{sel}#0", members,
                                   f"c-{rebalance}-{simulator}-{sel}", {}, units,
                                   rebalance=rebalance, simulator=simulator))
    return out


def test_a_night_simulates_each_continuing_pair_in_one_task():
    """continuing_pairs: a pair of a simulator that continues paths (vectorbt), with work to
    do and a stored path end for every strategy, goes in one task; the custom kernel (it
    does not continue), a pair whose chunks all replay (a warm rerun), a pair missing an
    end (a new strategy) or holding one chunk keep their grouping."""
    from flows.plan import continuing_pairs
    groups = {"all": ["a", "b"], "momentum": ["c"]}
    vbt = _sim_chunks("window", "vectorbt", groups)
    custom = _sim_chunks("window", "custom", groups)
    daily = _sim_chunks("daily", "vectorbt", groups)
    ends = {("window", "vectorbt"), ("window", "custom"), ("daily", "vectorbt")}

    def end_key(k, r, s):
        return f"end-{r}-{s}-{k[2]}"

    stored = {end_key((None, None, n), r, s) for r, s in ends for n in "abc"}
    assert continuing_pairs(vbt + custom + daily, stored.__contains__, end_key) == {
        ("window", "vectorbt"), ("daily", "vectorbt")}
    # a warm rerun: every unit of the daily pair stored -> it keeps its (stored) chunks
    warm = stored | {u for c in daily for u in c.unit_keys}
    assert continuing_pairs(vbt + daily, warm.__contains__, end_key) == {("window", "vectorbt")}
    # a strategy with no stored end (new this night): its pair keeps its grouping
    assert continuing_pairs(vbt, (stored - {"end-window-vectorbt-c"}).__contains__,
                            end_key) == set()
    # one chunk per pair already: nothing to merge
    assert continuing_pairs(_sim_chunks("window", "vectorbt", {"all": ["a", "b"]}),
                            stored.__contains__, end_key) == set()


def test_whole_pairs_get_one_chunk_of_every_strategy_with_the_same_units():
    from flows.plan import stage2_chunks
    keys = [("all", "custom", "a"), ("all", "custom", "b"), ("momentum", "custom", "c")]
    assert [n for n, _ in stage2_chunks(keys, "vectorbt")] == ["all#0", "momentum#0"]
    assert stage2_chunks(keys, "vectorbt", whole=True) == [("every#0", sorted(keys))]
