"""Prefect Blocks holding reusable tournament settings, saved once and loaded by name.

    prefect block register -m blocks.tournament_blocks
    TournamentGridBlock(engines=["custom"], fidelity="low").save("quick-grid", overwrite=True)
    resolve_blocks("quick-grid", None, None)
      -> {"fidelity": "low", "overrides": {"engines": ["custom"]}}

Each block returns the plain kwargs the `tournament` flow takes: the grid block gives the flat
TournamentConfig overrides (`to_overrides()`), the data block `data`/`days`/`data_kind`, the
compute block `ray_address`/`result_storage`/`num_cpus`. Fields left as None are "not set", so
the config file / flow defaults apply. Credentials (`ComputeBlock.storage_credentials`) are a
SecretStr: masked in the UI, logs and repr, and never part of the flow kwargs.
"""
from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator, model_validator

from tournament.registry import (PROFILES, REBALANCE_MODES, SELECTIONS,
                                 SIMULATORS, USER_ENGINES)


def _check_names(value: list[str] | None, valid, what: str) -> list[str] | None:
    if value is None:
        return None
    bad = [v for v in value if v not in valid]
    if bad:
        raise ValueError(f"unknown {what} {bad}; valid: {', '.join(sorted(valid))}")
    if not value:
        raise ValueError(f"{what} must not be empty (use null to keep the default)")
    return value


class TournamentGridBlock(Block):
    """The tournament grid and its parameters (None = keep the config/default value)."""

    _block_type_name = "Tournament Grid"
    _block_type_slug = "tournament-grid"
    _description = ("Selections x engines x profiles x rebalance modes, fidelity, walk-forward "
                    "windows, costs and constraints for a portfolio tournament.")

    selections: list[str] | None = Field(default=None, description=f"subset of {list(SELECTIONS)}")
    engines: list[str] | None = Field(default=None, description=f"subset of {list(USER_ENGINES)}")
    profiles: list[str] | None = Field(default=None, description=f"subset of {list(PROFILES)}")
    rebalances: list[str] | None = Field(default=None, description=f"subset of {list(REBALANCE_MODES)}")
    fidelity: Literal["low", "medium", "high"] | None = Field(
        default=None, description="simulator tier: low = custom; medium = + vectorbt; high = all")
    simulators: list[str] | None = Field(
        default=None, description="explicit simulator list (overrides the fidelity tier)")
    train: int | None = Field(default=None, ge=2, description="training window, trading days")
    test: int | None = Field(default=None, ge=1, description="test window, trading days")
    step: int | None = Field(default=None, ge=1, description="window step, trading days")
    slippage_bps: float | None = Field(default=None, ge=0, le=1e4)
    commission_bps: float | None = Field(default=None, ge=0, le=1e4)
    max_weight: float | None = Field(default=None, gt=0, le=1, description="per-asset cap")
    top_k: int | None = Field(default=None, ge=1, description="assets kept by momentum/low_vol/cluster")
    tolerance: float | None = Field(default=None, gt=0, le=1, description="drift that triggers a trade")

    @field_validator("selections")
    @classmethod
    def _selections(cls, v):
        return _check_names(v, SELECTIONS, "selections")

    @field_validator("engines")
    @classmethod
    def _engines(cls, v):
        return _check_names(v, USER_ENGINES, "engines")

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, v):
        return _check_names(v, PROFILES, "profiles")

    @field_validator("rebalances")
    @classmethod
    def _rebalances(cls, v):
        return _check_names(v, REBALANCE_MODES, "rebalances")

    @field_validator("simulators")
    @classmethod
    def _simulators(cls, v):
        return _check_names(v, tuple(SIMULATORS), "simulators")

    def to_overrides(self) -> dict[str, Any]:
        """Flat TournamentConfig field names -> values (only the fields that are set), as
        accepted by tournament.config.build_config / load_config(**overrides)."""
        out: dict[str, Any] = {}
        for name in ("selections", "engines", "profiles", "rebalances", "fidelity", "train",
                     "test", "step", "slippage_bps", "commission_bps", "max_weight", "top_k",
                     "tolerance"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, list) else value
        if self.simulators is not None:
            out["simulator_list"] = list(self.simulators)
        return out

    def to_config(self, config_path: str | None = None):
        """The full TournamentConfig (validates every value against the registries)."""
        from tournament.config import load_config
        return load_config(config_path, **self.to_overrides())




class DataSourceBlock(Block):
    """Where the returns come from: the bundled S&P 500 sample, synthetic data, or a file."""

    _block_type_name = "Tournament Data Source"
    _block_type_slug = "tournament-data-source"
    _description = "Data for a portfolio tournament: sp500 (bundled), synthetic, or a CSV/Parquet path."

    kind: Literal["sp500", "synthetic", "path"] = Field(default="sp500")
    path: str | None = Field(default=None, description="CSV/Parquet file (kind=path)")
    days: int | None = Field(default=500, ge=2, description="use the last N trading days (null = all)")
    synthetic_days: int = Field(default=1000, ge=2, description="synthetic shape: days")
    synthetic_assets: int = Field(default=100, ge=2, description="synthetic shape: assets")
    data_kind: Literal["prices", "returns"] = Field(default="prices", description="what the file holds")

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

    _block_type_name = "Tournament Compute"
    _block_type_slug = "tournament-compute"
    _description = ("Ray address (None = local Ray), result storage path or fsspec URL, and CPUs "
                    "for a portfolio tournament. Credentials are stored as a secret.")

    ray_address: str | None = Field(default=None, description="e.g. auto or host:6379; null = local")
    result_storage: str | None = Field(
        default=None, description="task result storage: path or URL (s3://..., gs://...)")
    num_cpus: int | None = Field(default=None, ge=1, description="local Ray CPUs (null = all)")
    storage_credentials: SecretStr | None = Field(
        default=None, description="credentials for the result storage (never logged)")

    def to_flow_kwargs(self) -> dict[str, Any]:
        """Flow kwargs only: the credentials are deliberately not included."""
        return {"ray_address": self.ray_address, "result_storage": self.result_storage,
                "num_cpus": self.num_cpus}

    def credentials(self) -> str | None:
        """The secret value, for code that configures the storage filesystem. Do not log."""
        return self.storage_credentials.get_secret_value() if self.storage_credentials else None


def resolve_blocks(grid_block: str | None = None, data_block: str | None = None,
                   compute_block: str | None = None) -> dict[str, Any]:
    """Load saved blocks by name and merge their kwargs for the `tournament` flow.

    Returns only the keys the given blocks set:
      {"fidelity": ..., "overrides": {...}}            from the grid block (fidelity is a flow
                                                      parameter, so it is not in overrides)
      {"data": ..., "days": ..., "data_kind": ...}     from the data block
      {"ray_address": ..., "result_storage": ..., "num_cpus": ...}  from the compute block
    The caller decides precedence (typically: an explicit flow argument wins over a block).
    """
    out: dict[str, Any] = {}
    if grid_block:
        overrides = TournamentGridBlock.load(grid_block).to_overrides()
        fidelity = overrides.pop("fidelity", None)
        if fidelity is not None:
            out["fidelity"] = fidelity
        out["overrides"] = overrides
    if data_block:
        out.update(DataSourceBlock.load(data_block).to_flow_kwargs())
    if compute_block:
        out.update(ComputeBlock.load(compute_block).to_flow_kwargs())
    return out
