"""The config overrides as a pydantic model: the typed `overrides` parameter of the
`tournament` flow (a form in the Prefect UI, validated by the API) and of the grid block.

Both are built from the one field table (tournament.config_fields.FIELDS) by `field_model`:
choices, bounds and descriptions come from there. Kept out of tournament.config so that
reading a config (the CLI, before it starts anything) does not import pydantic.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model

from .config_fields import FIELDS, NOT_IN_OVERRIDES, ConfigField
from .errors import ConfigError

_NUMBER_TYPES = {"int": int, "float": float}


def _pydantic_field(spec: ConfigField, *, alias: bool) -> tuple[Any, Any]:
    """(annotation, FieldInfo) of an optional field: None = not set (keep the config's)."""
    bounds: dict[str, Any] = {}
    if spec.kind in _NUMBER_TYPES:
        annotation = _NUMBER_TYPES[spec.kind]
        bounds["gt" if spec.lo_open else "ge"] = spec.lo
        if spec.hi is not None:
            bounds["le"] = spec.hi
    elif spec.kind == "choice":
        annotation = Literal[spec.choices]
    elif spec.kind == "date":
        annotation = str
        bounds["pattern"] = r"^(\d{4}-\d{2}-\d{2})?$"
    else:
        annotation = list[Literal[spec.choices]]
        if not spec.allow_empty:
            bounds["min_length"] = 1
    if alias and spec.key != spec.name:     # the flat name (the CLI's dict) is accepted too
        bounds["validation_alias"] = AliasChoices(spec.key, spec.name)
    return annotation | None, Field(default=None, description=spec.help, **bounds)


def field_model(model_name: str, fields=FIELDS, *, alias: bool = False) -> type[BaseModel]:
    """A pydantic model with one optional field per config field, named by its `key`; a
    base for the models the UI shows (they add their config and methods)."""
    return create_model(model_name, __module__=__name__,
                        **{f.key: _pydantic_field(f, alias=alias) for f in fields})


_BY_KEY = {f.key: f for f in FIELDS}
_OverrideFields = field_model(
    "_OverrideFields", [f for f in FIELDS if f.name not in NOT_IN_OVERRIDES], alias=True)


class GridOverrides(_OverrideFields):
    """Overrides of the config (file or built-in defaults); unset fields keep it.

    The fields of tournament.config_fields.FIELDS by their TOML key; `simulators` is also
    accepted as `simulator_list` (the CLI's name). Unknown keys are refused. Fidelity is not
    here: it is a parameter of its own."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

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
        return {_BY_KEY[key].name: value for key, value in out.items()}
