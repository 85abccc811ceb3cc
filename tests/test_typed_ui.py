"""Issue 16, a typed UI: the `tournament` flow's parameter schema (choices, descriptions,
block pickers), typed grid overrides, block-typed parameters and readable run names.

`assert_typed_schema` is shared with tests/test_deployments_e2e.py, which applies it to the
schema read back from a real server's API after `prefect deploy --all`.
(Tests that import Prefect take the session's `prefect_server` first: Prefect reads
PREFECT_API_URL when it is first imported.)
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tournament.registry import (FIDELITY_TIERS, PROFILES, REBALANCE_MODES, SELECTIONS,
                                 SIMULATORS, USER_ENGINES)

GRID_AXES = {"selections": list(SELECTIONS), "engines": list(USER_ENGINES),
             "profiles": list(PROFILES), "rebalances": list(REBALANCE_MODES),
             "simulators": list(SIMULATORS)}
BLOCK_PARAMETERS = {"grid": "tournament-grid", "data_source": "tournament-data-source",
                    "compute": "tournament-compute"}
QUICK_TOML, NIGHTLY_TOML = str(REPO / "configs" / "quick.toml"), str(REPO / "configs" / "nightly.toml")
TINY = {"engines": ["custom"], "selections": ["all"], "profiles": ["equal_weight", "min_variance"],
        "rebalances": ["window"]}


# ----------------------------------------------------------------------------- schema
def _resolve(node: dict, definitions: dict) -> dict:
    """`node` with a `$ref` to a definition replaced by that definition."""
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/definitions/"):
        return definitions[ref.rsplit("/", 1)[1]]
    return node


def _non_null(prop: dict, definitions: dict) -> dict:
    """The non-null alternative of an Optional property (anyOf [X, null]) -> X, resolved."""
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    assert len(options) == 1, prop
    return _resolve(options[0], definitions)


def _enum(prop: dict, definitions: dict) -> list:
    node = _non_null(prop, definitions)
    if node.get("type") == "array":
        node = _resolve(node["items"], definitions)
    return node.get("enum")


def assert_typed_schema(schema: dict) -> None:
    """The UI form's contract: choices for fidelity, data_kind and every grid axis, bounds on
    the windows, a block picker for each block parameter, a description on every parameter."""
    props, definitions = schema["properties"], schema.get("definitions", {})
    missing = [name for name, p in props.items() if not str(p.get("description", "")).strip()]
    assert missing == [], f"parameters without a description: {missing}"
    assert _enum(props["fidelity"], definitions) == list(FIDELITY_TIERS)
    assert _enum(props["data_kind"], definitions) == ["prices", "returns"]
    overrides = _non_null(props["overrides"], definitions)
    assert overrides.get("additionalProperties") is False      # unknown keys refused
    fields = overrides["properties"]
    for axis, names in GRID_AXES.items():
        assert _enum(fields[axis], definitions) == names, axis
        assert str(fields[axis].get("description", "")).strip(), axis
    assert _enum(fields["on_infeasible"], definitions) == ["hold", "cash", "fail"]
    assert _enum(fields["covariance"], definitions) == ["ledoit_wolf", "sample"]
    assert {w: _non_null(fields[w], definitions).get("minimum") for w in ("train", "test", "step")} \
        == {"train": 2, "test": 1, "step": 1}
    assert _non_null(props["days"], definitions).get("minimum") == 0
    for name, slug in BLOCK_PARAMETERS.items():
        assert _non_null(props[name], definitions).get("block_type_slug") == slug, name
    # The blocks' own forms are typed too (the grid block's axes are choices).
    grid_block = _non_null(props["grid"], definitions)["properties"]
    for axis, names in GRID_AXES.items():
        assert _enum(grid_block[axis], definitions) == names, axis
    assert not {"grid_block", "data_block", "compute_block"} & set(props)


def test_parameter_schema_has_choices_bounds_block_pickers_and_descriptions(prefect_server):
    from prefect.utilities.callables import parameter_schema

    from flows.tournament_flow import tournament
    schema = parameter_schema(tournament).model_dump_for_openapi()
    assert_typed_schema(schema)
    props = schema["properties"]
    assert props["fidelity"]["description"].startswith("Simulator tier: low = custom")
    assert list(props)[:4] == ["fidelity", "data", "days", "data_kind"]   # the form's order


def test_the_api_validation_accepts_a_block_pick_and_refuses_bad_choices(prefect_server):
    """What the server does with a deployment run's parameters (enforce_parameter_schema):
    Prefect's `validate` against the flow's schema. A UI pick arrives as a `$ref`."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.tournament_flow import tournament
    schema = parameter_schema(tournament).model_dump_for_openapi()
    good = {"grid": {"$ref": {"block_document_slug": "tournament-grid/small"}},
            "data_source": {"$ref": "0b0f1e7a-3e5c-4a0e-9f57-3a2c1a9b7d11"},
            "compute": {"num_cpus": 2}, "fidelity": "medium",
            "overrides": {"engines": ["custom"], "simulators": ["custom", "nautilus"]}}
    validate(good, schema, raise_on_error=True)
    for bad, words in (({"fidelity": "ultra"}, "fidelity"),
                       ({"overrides": {"engines": ["nope"]}}, "overrides.engines"),
                       ({"overrides": {"typo": 1}}, "typo"),
                       ({"grid": {"engines": ["nope"]}}, "grid.engines"),
                       ({"grid": "small"}, "grid"), ({"days": -1}, "days")):
        with pytest.raises(Exception, match=words):
            validate(bad, schema, raise_on_error=True)


# ----------------------------------------------------------------------------- overrides
def test_overrides_accept_the_cli_dict_and_the_model_and_refuse_bad_values():
    from tournament.overrides import GridOverrides
    from tournament.errors import ConfigError
    cli = {"engines": ["custom"], "simulator_list": ["custom", "vectorbt"], "train": 120,
           "on_infeasible": "cash"}
    model = GridOverrides.coerce(cli)
    assert model.simulators == ["custom", "vectorbt"]
    assert model.to_overrides() == {"engines": ["custom"], "train": 120, "on_infeasible": "cash",
                                    "simulator_list": ["custom", "vectorbt"]}
    assert GridOverrides.coerce(model) is model
    assert GridOverrides.coerce(None).to_overrides() == {}
    for bad, words in (({"engines": ["nope"]}, "engines.0"), ({"fidelity": "low"}, "fidelity"),
                       ({"train": 1}, "train"), ({"selections": []}, "selections"),
                       ({"tolerance": 0}, "tolerance")):
        with pytest.raises(ConfigError, match=words):
            GridOverrides.coerce(bad)


# ----------------------------------------------------------------------------- precedence
def test_explicit_parameter_wins_over_block_which_wins_over_config_file(prefect_server):
    from blocks.tournament_blocks import ComputeBlock, DataSourceBlock, TournamentGridBlock
    from flows.inputs import resolve_inputs
    from tournament.data import SYNTHETIC_SHAPE
    grid = TournamentGridBlock(fidelity="medium", engines=["skfolio"], selections=["all"], top_k=3)
    source = DataSourceBlock(kind="synthetic", synthetic_days=400, synthetic_assets=12, days=None)
    compute = ComputeBlock(num_cpus=3, result_storage="/tmp/from-block")

    only_blocks = resolve_inputs(config_path=QUICK_TOML, grid=grid,
                                 data_source=source, compute=compute)
    config = only_blocks.config()
    assert (config.fidelity, config.engines, config.selections, config.top_k) == \
        ("medium", ("skfolio",), ("all",), 3)                  # block > configs/quick.toml
    assert (only_blocks.data, only_blocks.days, only_blocks.data_kind) == \
        ("synthetic:400x12", None, "prices")                   # days None: the source's table
    assert (only_blocks.num_cpus, only_blocks.result_storage) == (3, "/tmp/from-block")

    explicit = resolve_inputs(config_path=QUICK_TOML, grid=grid, data_source=source,
                              compute=compute, fidelity="low", days=0, num_cpus=1,
                              overrides={"engines": ["custom"]})
    config = explicit.config()
    assert (config.fidelity, config.engines, config.selections, config.top_k) == \
        ("low", ("custom",), ("all",), 3)                      # per key: explicit > block
    assert (explicit.days, explicit.num_cpus) == (0, 1)
    # No block, no parameter: the config file, then the built-in defaults.
    plain = resolve_inputs(config_path=NIGHTLY_TOML)
    assert plain.config().fidelity == "high" and (plain.data, plain.days) == ("sp500", None)
    assert DataSourceBlock().days is None and SYNTHETIC_SHAPE[0] == DataSourceBlock().synthetic_days
    # A reference to a block of another type is refused before any API call.
    from blocks.tournament_blocks import load_block
    with pytest.raises(ValueError, match="not a tournament-grid block"):
        load_block({"$ref": {"block_document_slug": "tournament-compute/x"}}, TournamentGridBlock)
    assert load_block(grid, TournamentGridBlock) is grid and load_block(None, ComputeBlock) is None


# ----------------------------------------------------------------------------- run names
def test_run_names_say_fidelity_data_and_days_as_the_run_uses_them(prefect_server):
    from blocks.tournament_blocks import DataSourceBlock, TournamentGridBlock
    from flows.inputs import run_name_for
    from tournament.data import DEFAULT_SP500_DAYS
    assert run_name_for({}) == f"tournament low sp500 {DEFAULT_SP500_DAYS}d"
    assert run_name_for({"fidelity": "medium", "data": "synthetic:300x20"}) == \
        "tournament medium synthetic:300x20 300d"
    # The nightly config anchors its windows: the whole history, from its start.
    assert run_name_for({"config_path": NIGHTLY_TOML, "data": "/feed/prices.parquet"},
                        "nightly") == "nightly high prices.parquet all from 2018-03-26"
    assert run_name_for({"data": "/data/prices.csv", "days": None}) == "tournament low prices.csv all"
    assert run_name_for({"days": 0}) == "tournament low sp500 all"
    blocks = {"grid": TournamentGridBlock(fidelity="medium"),
              "data_source": DataSourceBlock(days=250)}
    assert run_name_for(blocks, "adhoc") == "adhoc medium sp500 250d"
    assert run_name_for({**blocks, "fidelity": "high", "days": 300}, "adhoc") == \
        "adhoc high sp500 300d"
    # Invalid inputs still give a name (the run then fails with the full message).
    assert run_name_for({"fidelity": "ultra"}) == "tournament ultra sp500"
    assert "None" not in run_name_for({"fidelity": None, "data": None})


def test_artifact_keys_are_deployment_or_cli_then_kind_slugified(prefect_server):
    from prefect.client.schemas.actions import ArtifactCreate

    from tasks.artifacts import artifact_key, default_key_prefix
    cases = {("quick", "leaderboard"): "quick-leaderboard",
             ("Nightly Run_2", "report"): "nightly-run-2-report",
             ("E2E check", "summary"): "e2e-check-summary",
             ("--ad hoc--", "progress"): "ad-hoc-progress"}
    for (prefix, kind), key in cases.items():
        assert artifact_key(prefix, kind) == key
        ArtifactCreate(key=key)                      # Prefect's own key rule accepts it
    assert default_key_prefix() == "cli"             # outside a deployment


# ----------------------------------------------------------------------------- a real run
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_block_parameters_resolve_in_a_run_and_explicit_parameters_win(ray_session, tmp_path):
    """Saved blocks passed as the UI's pick reaches the flow (`$ref` by id), as the CLI's
    `$ref` by slug, and by name: their values are used; an explicit fidelity and overrides key win; the run's
    name, read back from the API, says what ran; the report artifact carries the charts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from blocks.tournament_blocks import ComputeBlock, DataSourceBlock, TournamentGridBlock
    from flows.tournament_flow import tournament
    TournamentGridBlock(**TINY, fidelity="medium", train=120, test=30, step=30).save(
        "typed-ui-grid", overwrite=True)
    DataSourceBlock(kind="sp500", days=280).save("typed-ui-data", overwrite=True)
    compute_id = ComputeBlock(num_cpus=2, result_storage=str(tmp_path / "cache")).save(
        "typed-ui-compute", overwrite=True)

    summary = tournament(
        grid={"$ref": {"block_document_slug": "tournament-grid/typed-ui-grid"}},   # CLI form
        data_source="typed-ui-data",                                              # a name
        compute={"$ref": {"block_document_id": str(compute_id)}},                 # a UI pick
        fidelity="low",
        overrides={"profiles": ["equal_weight"]}, out=str(tmp_path / "run"))
    assert summary["status"] == "completed"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    cfg = manifest["config"]
    assert cfg["fidelity"] == "low" and cfg["simulators"] == ["custom"]     # explicit wins
    assert cfg["engines"] == ["custom"] and cfg["selections"] == ["all"]    # from the block
    assert cfg["profiles"] == ["equal_weight"]                              # explicit override key
    assert cfg["windows"] == {"start": "", "train": 120, "test": 30, "step": 30}   # the block's
    assert manifest["data"]["days"] == 280                                  # the data block's
    assert manifest["result_storage"] == str(tmp_path / "cache")            # the compute block's
    assert Path(tmp_path / "cache").is_dir()

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(summary["flow_run_id"])
        assert run.name == "tournament low sp500 280d"
        artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))}
    assert {"cli-leaderboard", "cli-summary", "cli-report", "cli-progress"} <= set(artifacts)
    report = artifacts["cli-report"]
    assert report.type == "markdown"
    assert "## Top 15 strategies (Sharpe) and baselines" in report.data
    assert report.data.count("](data:image/png;base64,") >= 2     # equity curve + a heatmap
    assert "### Equity curves (custom)" in report.data
