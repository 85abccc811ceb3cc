"""The config overrides as a pydantic model: the typed `overrides` parameter of the
`tournament` flow (a form in the Prefect UI, validated by the API) and of the grid block.

Kept out of tournament.config so that reading a config (the CLI, before it starts anything)
does not import pydantic.
"""
from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from .config import (CovarianceName, EngineName, InfeasiblePolicy, ProfileName, RebalanceName,
                     SelectionName, SimulatorName)
from .errors import ConfigError


class GridOverrides(BaseModel):
    """Overrides of the config (file or built-in defaults); unset fields keep it.

    The flat field names of `load_config(**overrides)`; `simulators` is also accepted as
    `simulator_list` (the CLI's name). Unknown keys are refused. Fidelity is not here: it is
    a parameter of its own."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    selections: list[SelectionName] | None = Field(
        default=None, min_length=1, description="asset selection modes to run")
    engines: list[EngineName] | None = Field(
        default=None, min_length=1, description="optimisation engines to run")
    profiles: list[ProfileName] | None = Field(
        default=None, min_length=1, description="portfolio profiles (objectives) to run")
    rebalances: list[RebalanceName] | None = Field(
        default=None, min_length=1, description="rebalance modes to simulate")
    simulators: list[SimulatorName] | None = Field(
        default=None, validation_alias=AliasChoices("simulators", "simulator_list"),
        description="explicit simulator list; replaces the fidelity tier's (empty = the tier's)")
    train: int | None = Field(default=None, ge=2, description="training window, trading days")
    test: int | None = Field(default=None, ge=1, description="test window, trading days")
    step: int | None = Field(default=None, ge=1, description="window step, trading days")
    slippage_bps: float | None = Field(default=None, ge=0, le=1e4,
                                       description="slippage, bps of traded notional")
    commission_bps: float | None = Field(default=None, ge=0, le=1e4,
                                         description="commission, bps of traded notional")
    max_weight: float | None = Field(default=None, gt=0, le=1,
                                     description="per-asset weight cap (long-only)")
    top_k: int | None = Field(default=None, ge=1,
                              description="assets kept by momentum / low_vol / cluster")
    tolerance: float | None = Field(default=None, gt=0, le=1,
                                    description="one-way drift that triggers a trade (tolerance mode)")
    covariance: CovarianceName | None = Field(default=None, description="covariance estimator")
    risk_free: float | None = Field(default=None, ge=-1, le=1,
                                    description="daily risk-free rate for max_sharpe")
    annualization: int | None = Field(default=None, ge=1, description="periods per year")
    on_infeasible: InfeasiblePolicy | None = Field(
        default=None, description="a window that cannot be solved: hold the previous target, "
        "hold cash, or fail the strategy")

    @classmethod
    def coerce(cls, value: "GridOverrides | dict[str, Any] | None") -> "GridOverrides":
        """A model from None, a dict (the CLI's, a deployment's JSON) or a model."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_none=True)
        try:
            return cls.model_validate(value)
        except ValidationError as exc:        # one line, like every other config error
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "overrides"
            raise ConfigError(f"config error in overrides: {where}: {first['msg']} "
                              f"(got {first.get('input')!r})") from None

    def to_overrides(self) -> dict[str, Any]:
        """The set fields as `load_config(**overrides)` keywords (`simulator_list`)."""
        out = self.model_dump(exclude_none=True)
        if "simulators" in out:
            out["simulator_list"] = out.pop("simulators")
        return out
