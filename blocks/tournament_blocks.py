"""Prefect Blocks holding reusable tournament settings, saved once and picked in the UI.

    prefect block register -m blocks.tournament_blocks
    TournamentGridBlock(engines=["custom"], fidelity="low").save("quick-grid", overwrite=True)

The `tournament` flow takes them as block-typed parameters (`grid`, `data_source`,
`compute`): the Prefect UI's run form offers a picker of the saved blocks of each type, and
the API passes the pick as a reference (`{"$ref": {"block_document_id": ...}}`, or
`{"$ref": {"block_document_slug": "tournament-grid/quick-grid"}}` from the CLI) that the flow
loads. Each block gives the plain kwargs the flow uses: the grid block the flat
TournamentConfig overrides (`to_overrides()`) and a fidelity, the data block
`data`/`days`/`data_kind`, the compute block `ray_address`/`result_storage`/`num_cpus`.
Fields left as None are "not set", so the config file / flow defaults apply, and an explicit
flow parameter always wins over a block's value.

No credentials live here (`ComputeBlock.storage_credentials` was removed in issue 16: the
flow never used it, and one secret string cannot say which fsspec option it is). Storage
credentials come from the worker's environment, which fsspec reads (`AWS_*`, `~/.aws`, an
instance role), or from the `settings` of the RemoteFileSystem block that
`ComputeBlock.result_storage` names by slug.
"""
from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from prefect.blocks.core import schema_extra as block_schema_extra
from pydantic import ConfigDict, Field, model_validator

from tournament.config import DataKind
from tournament.config_fields import DATA_KINDS, DEFAULT_SP500_DAYS
from tournament.data import SYNTHETIC_SHAPE
from tournament.overrides import GridOverrides, field_model


def _schema_extra(schema: dict[str, Any], model: type[Block]) -> None:
    """Prefect's block schema, plus: a block's data never holds a `$ref` key.

    A block picked in the UI reaches the API as `{"$ref": ...}`, which Prefect's server
    validates against `oneOf: [the block's schema, a $ref object]`. These blocks have no
    required field and allow extra keys, so without this a `$ref` object would match both
    and the server would refuse every pick ("... is valid under each of ...").

    Written as if/then rather than `not: {required: [$ref]}`: Prefect 3.9 validates a
    deployment's preset parameters with every nested `required` key removed, which turns
    that `not` into `not: {}` (nothing valid), so no deployment could preset a block by
    reference (the nightly deployment's data source). Stripped, this clause is `if: {},
    then: {}` (always valid); whole, a `$ref` key requires a key no block has."""
    block_schema_extra(schema, model)
    schema["if"] = {"required": ["$ref"]}
    schema["then"] = {"required": ["$ref is a reference, not block data"]}


# The grid block's fields: every config field (tournament.config_fields.FIELDS, fidelity
# included), optional, with the table's choices, bounds and descriptions.
_GridBlockFields = field_model("_GridBlockFields")


class TournamentGridBlock(Block, _GridBlockFields):
    """The tournament grid and its parameters (None = keep the config/default value)."""

    model_config = ConfigDict(json_schema_extra=_schema_extra)

    _block_type_name = "Tournament Grid"
    _block_type_slug = "tournament-grid"
    _description = ("Selections x engines x profiles x rebalance modes, fidelity, walk-forward "
                    "windows, costs, constraints and estimation for a portfolio tournament.")

    def grid_overrides(self) -> GridOverrides:
        """The set fields except fidelity, as the flow's typed `overrides`."""
        return GridOverrides.coerce({name: getattr(self, name) for name in GridOverrides.model_fields
                                     if getattr(self, name, None) is not None})

    def to_overrides(self) -> dict[str, Any]:
        """Flat TournamentConfig field names -> values (only the fields that are set), as
        accepted by tournament.config.build_config / load_config(**overrides)."""
        out = self.grid_overrides().to_overrides()
        if self.fidelity is not None:
            out["fidelity"] = self.fidelity
        return out

    def to_config(self, config_path: str | None = None):
        """The full TournamentConfig (validates every value against the registries)."""
        from tournament.config import load_config
        return load_config(config_path, **self.to_overrides())


class DataSourceBlock(Block):
    """Where the returns come from: the bundled S&P 500 sample, synthetic data, or a file."""

    model_config = ConfigDict(json_schema_extra=_schema_extra)

    _block_type_name = "Tournament Data Source"
    _block_type_slug = "tournament-data-source"
    _description = "Data for a portfolio tournament: sp500 (bundled), synthetic, or a CSV/Parquet path."

    kind: Literal["sp500", "synthetic", "path"] = Field(default="sp500")
    path: str | None = Field(default=None, description="CSV/Parquet file (kind=path)")
    days: int | None = Field(default=None, ge=0, description=(
        f"use the last N trading days (null = the source's default, tournament.data."
        f"default_days: sp500 {DEFAULT_SP500_DAYS}, synthetic its days, a file every row; "
        "0 = the whole history)"))
    synthetic_days: int = Field(default=SYNTHETIC_SHAPE[0], ge=2, description="synthetic shape: days")
    synthetic_assets: int = Field(default=SYNTHETIC_SHAPE[1], ge=2, description="synthetic shape: assets")
    data_kind: DataKind = Field(default=DATA_KINDS[0], description="what the file holds")

    @model_validator(mode="after")
    def _path_needed(self):
        if self.kind == "path" and not self.path:
            raise ValueError("kind='path' needs a path")
        return self

    def to_flow_kwargs(self) -> dict[str, Any]:
        if self.kind == "sp500":
            data = "sp500"
        elif self.kind == "synthetic":
            data = f"synthetic:{self.synthetic_days}x{self.synthetic_assets}"
        else:
            data = str(self.path)
        return {"data": data, "days": self.days, "data_kind": self.data_kind}


class ComputeBlock(Block):
    """Where and how to compute: Ray cluster address, Prefect result storage, local CPUs."""

    model_config = ConfigDict(json_schema_extra=_schema_extra)

    _block_type_name = "Tournament Compute"
    _block_type_slug = "tournament-compute"
    _description = ("Ray address (None = local Ray), result storage (path, fsspec URL or "
                    "storage block slug) and CPUs for a portfolio tournament.")

    ray_address: str | None = Field(default=None, description="e.g. auto or host:6379; null = local")
    result_storage: str | None = Field(
        default=None, description="task result storage: path, fsspec URL (s3://..., gs://...) "
        "or storage block slug (local-file-system/NAME, remote-file-system/NAME); null = "
        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK if set, else .tournament-cache/results")
    num_cpus: int | None = Field(default=None, ge=1, description="local Ray CPUs (null = all)")

    @model_validator(mode="before")
    @classmethod
    def _drop_removed_credentials(cls, data: Any) -> Any:
        # Documents saved before issue 16 may hold `storage_credentials` (never used by the
        # flow; removed). Blocks keep unknown fields as plain attributes: drop it, so a
        # loaded secret never sits around unmasked.
        if isinstance(data, dict) and "storage_credentials" in data:
            data = {k: v for k, v in data.items() if k != "storage_credentials"}
        return data

    def to_flow_kwargs(self) -> dict[str, Any]:
        return {"ray_address": self.ray_address, "result_storage": self.result_storage,
                "num_cpus": self.num_cpus}


def load_block(value: Any, cls: type[Block]) -> Block | None:
    """A block parameter as the flow receives it -> the block: an instance (a direct call),
    a reference `{"$ref": {"block_document_id"|"block_document_slug": ...}}` or
    `{"$ref": "<uuid>"}` (the UI and the API), or a saved block's name (Python callers)."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, str):
        return cls.load(value, _sync=True)
    if isinstance(value, dict) and "$ref" in value:
        ref = value["$ref"]
        if isinstance(ref, dict) and ref.get("block_document_slug"):
            # Prefect's load_from_ref splits "<type>/<name>" only when called on Block
            # itself; on a block class it takes the whole slug as the name. Split here.
            block_type, _, name = str(ref["block_document_slug"]).rpartition("/")
            if block_type and block_type != cls.get_block_type_slug():
                raise ValueError(f"{ref['block_document_slug']!r} is not a "
                                 f"{cls.get_block_type_slug()} block")
            return cls.load(name, _sync=True)
        return cls.load_from_ref(ref, _sync=True)
    if isinstance(value, dict):
        return cls.model_validate(value)
    raise TypeError(f"expected a {cls.__name__}, a block reference or a block name, "
                    f"got {type(value).__name__}")


def resolve_blocks(grid_block: Any = None, data_block: Any = None,
                   compute_block: Any = None) -> dict[str, Any]:
    """Load blocks (instances, references or saved names, see `load_block`) and merge their
    kwargs for the `tournament` flow.

    Returns only the keys the given blocks set:
      {"fidelity": ..., "overrides": {...}}            from the grid block (fidelity is a flow
                                                      parameter, so it is not in overrides)
      {"data": ..., "days": ..., "data_kind": ...}     from the data block
      {"ray_address": ..., "result_storage": ..., "num_cpus": ...}  from the compute block
    The caller decides precedence (typically: an explicit flow argument wins over a block).
    """
    out: dict[str, Any] = {}
    if grid_block:
        grid = load_block(grid_block, TournamentGridBlock)
        if grid.fidelity is not None:
            out["fidelity"] = grid.fidelity
        out["overrides"] = grid.grid_overrides().to_overrides()
    if data_block:
        out.update(load_block(data_block, DataSourceBlock).to_flow_kwargs())
    if compute_block:
        out.update(load_block(compute_block, ComputeBlock).to_flow_kwargs())
    return out
