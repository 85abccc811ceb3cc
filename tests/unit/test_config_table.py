"""The one field table (tournament/config_fields.py) and what is derived from it agree:
configs/default.toml spells out the table's defaults, and every field is offered by the CLI,
the flow's typed overrides and the grid block (or the table says why not)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO
from tournament.config import CostModel, TournamentConfig, WindowSpec, load_config
from tournament.config_fields import FIELDS, NOT_IN_OVERRIDES, SECTIONS
from tournament.errors import ConfigError

DEFAULT_TOML = REPO / "configs" / "default.toml"


def _typed(value):
    """A value as compared: lists as tuples, with its type (5 is not 5.0 to a digest)."""
    value = tuple(value) if isinstance(value, list) else value
    return type(value), value


def test_default_toml_holds_every_field_in_its_section_with_the_table_default():
    raw = tomllib.loads(DEFAULT_TOML.read_text())
    in_file = {(section, key) for section, values in raw.items() for key in values}
    assert in_file == {(f.section, f.key) for f in FIELDS}
    for f in FIELDS:
        assert _typed(raw[f.section][f.key]) == _typed(f.default), f.location
    assert load_config(DEFAULT_TOML) == load_config() == TournamentConfig()


def test_table_is_well_formed():
    assert len({f.name for f in FIELDS}) == len({f.key for f in FIELDS}) == len(FIELDS)
    groups = {"windows": WindowSpec, "costs": CostModel}     # the config's nested parts
    flat = [f.name for f in dataclasses.fields(TournamentConfig) if f.name not in groups]
    flat += [f.name for g in groups.values() for f in dataclasses.fields(g)]
    assert sorted(flat) == sorted(f.name for f in FIELDS)
    assert sum(len(keys) for keys in SECTIONS.values()) == len(FIELDS)
    for f in FIELDS:
        assert f.help.strip(), f.name
        if f.kind in ("names", "choice"):
            assert f.choices, f.name
        elif f.kind == "date":
            assert f.default == "", f.name        # unset by default
        else:
            assert f.lo is not None, f.name
        load_config(**{f.name: f.default if f.kind != "names" or f.default else []})


def test_every_field_has_a_cli_flag_and_the_flags_map_to_the_fields():
    from flows.cli import _overrides, build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    flags = {opt: action.dest for action in run._actions for opt in action.option_strings}
    for f in FIELDS:
        assert flags.get("--" + f.key.replace("_", "-")) == f.key, f.name
    args = build_parser().parse_args(
        ["run", "--engines", "custom", "--simulators", "custom,vectorbt", "--top-k", "5",
         "--slippage-bps", "2.5", "--covariance", "sample", "--fidelity", "high",
         "--on-infeasible", "cash"])
    assert _overrides(args) == {"engines": ["custom"], "simulator_list": ["custom", "vectorbt"],
                                "top_k": 5, "slippage_bps": 2.5, "covariance": "sample",
                                "on_infeasible": "cash"}       # fidelity: its own parameter
    cfg = load_config(fidelity=args.fidelity, **_overrides(args))
    assert (cfg.simulators, cfg.top_k, cfg.costs.slippage_bps, cfg.covariance) == \
        (("custom", "vectorbt"), 5, 2.5, "sample")


def test_flow_overrides_offer_every_field_but_the_listed_ones():
    from tournament.overrides import GridOverrides
    schema = GridOverrides.model_json_schema()["properties"]
    offered = {f.key for f in FIELDS if f.name not in NOT_IN_OVERRIDES}
    assert set(schema) == offered and all(NOT_IN_OVERRIDES.values())
    for f in FIELDS:
        if f.key in schema:
            assert schema[f.key]["description"] == f.help, f.name
    with pytest.raises(ConfigError, match=r"covariance: Input should be 'ledoit_wolf' or 'sample'"):
        GridOverrides.coerce({"covariance": "nope"})


def test_grid_block_offers_every_field():
    # In a child process: importing Prefect here, before a test's prefect_server fixture
    # exports PREFECT_API_URL, would pin this process to the wrong API.
    code = ("import json\nfrom blocks.tournament_blocks import TournamentGridBlock as B\n"
            "print(json.dumps({k: f.description for k, f in B.model_fields.items()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO, timeout=120)
    fields = json.loads(out.stdout.strip().splitlines()[-1])
    assert fields == {f.key: f.help for f in FIELDS}


@pytest.mark.parametrize("overrides, expected", [
    ({"windows": {"train": 10}}, r"unknown field 'windows'"),
    ({"fidelity": ["low"]}, r"\[grid\] fidelity: unknown fidelity \['low'\]"),
    ({"covariance": "ols"}, r"\[estimation\] covariance: unknown covariance estimator 'ols'"),
    ({"risk_free": 2}, r"\[estimation\] risk_free: must be >= -1 and <= 1, got 2"),
    ({"top_k": True}, r"\[selection\] top_k: must be an integer, got True"),
    ({"simulator_list": "custom,custom"}, r"\[grid\] simulators: duplicate names"),
])
def test_errors_name_the_toml_key_and_the_problem(overrides, expected):
    with pytest.raises(ConfigError, match=r"config error in <defaults>: .*" + expected):
        load_config(**overrides)
