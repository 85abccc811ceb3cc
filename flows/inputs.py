"""The `tournament` flow's inputs: blocks, typed overrides and explicit parameters merged
into the values a run uses, and the run's name.

Precedence, per value: an explicit flow parameter (not None) > the picked block's value >
the config file (`config_path`) > the built-in defaults. Overrides merge per key: an
explicit `overrides` key wins over the grid block's, the others keep the block's.

The flow runs with `validate_parameters=False`, so parameters arrive as the caller gave them:
blocks as instances (Python), references `{"$ref": ...}` (the UI, the API) or saved names
(Python); overrides as a `GridOverrides` or a dict (the CLI, deployments' JSON). Both are
validated here, before anything is computed.

`prepare_run` is the one preparation of a run's config and data (loaded, validated, windows
cut): the CLI calls it before starting any service, then the flow and its stage subflows call
it again with the same small descriptors and get the same objects back (module docstring of
`prepare_run`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tournament.config import TournamentConfig, load_config
from tournament.config_fields import DATA_KINDS
from tournament.data import BUNDLED, Dataset, load_dataset, resolve_days, validate_for_config
from tournament.errors import ConfigError
from tournament.windows import Window, windows_for

DEFAULT_DATA_KIND = DATA_KINDS[0]


@dataclass
class FlowInputs:
    """What a run uses after blocks and explicit parameters are merged (None = default)."""
    config_path: str | None
    fidelity: str | None
    overrides: dict[str, Any] = field(default_factory=dict)   # load_config(**overrides)
    data: str = BUNDLED
    data_kind: str = DEFAULT_DATA_KIND
    days: int | None = None
    ray_address: str | None = None
    result_storage: str | None = None
    num_cpus: int | None = None

    def config(self) -> TournamentConfig:
        return load_config(self.config_path, fidelity=self.fidelity, **self.overrides)


def _first(*values):
    return next((v for v in values if v is not None), None)


def resolve_inputs(*, config_path: str | None = None, fidelity: str | None = None,
                   data: str | None = None, data_kind: str | None = None,
                   days: int | None = None, overrides: Any = None, grid: Any = None,
                   data_source: Any = None, compute: Any = None,
                   ray_address: str | None = None, result_storage: str | None = None,
                   num_cpus: int | None = None) -> FlowInputs:
    """Load the blocks (if any), validate the overrides, merge (module docstring)."""
    from blocks.tournament_blocks import resolve_blocks
    from tournament.overrides import GridOverrides     # pydantic: not on the CLI's path
    explicit = GridOverrides.coerce(overrides).to_overrides()
    b = resolve_blocks(grid, data_source, compute) if (grid or data_source or compute) else {}
    return FlowInputs(
        config_path=config_path,
        fidelity=_first(fidelity, b.get("fidelity")),
        overrides={**b.get("overrides", {}), **explicit},
        data=_first(data, b.get("data"), BUNDLED),
        data_kind=_first(data_kind, b.get("data_kind"), DEFAULT_DATA_KIND),
        days=_first(days, b.get("days")),
        ray_address=_first(ray_address, b.get("ray_address")),
        result_storage=_first(result_storage, b.get("result_storage")),
        num_cpus=_first(num_cpus, b.get("num_cpus")),
    )


# ----------------------------------------------------------------------------- preparation
@dataclass(frozen=True)
class PreparedRun:
    """A run's config with its data loaded and validated for it, and the windows cut."""
    config: TournamentConfig
    dataset: Dataset
    windows: list[Window]


# The last preparation in this process, by what it was prepared from. A cache, not a channel:
# a miss only loads again. It lets the CLI's validation, the flow it starts and the stage
# subflows (which get only descriptors as parameters) share one load of the data.
_PREPARED: dict[tuple, PreparedRun] = {}


def _source_stamp(data: str) -> tuple:
    """What invalidates a loaded data file: its path, size and mtime (none for sp500 and
    synthetic, which are fixed by their name)."""
    path = Path(data)
    if data == BUNDLED or data.startswith("synthetic") or not path.is_file():
        return (data,)
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def prepare_run(config: TournamentConfig, *, data: str, data_kind: str, days: int | None,
                loaded: Dataset | None = None) -> PreparedRun:
    """Load the data source (`data`, `data_kind`, `days`), validate it for `config` (raises
    TournamentError, one line) and cut the windows. The CLI, the `tournament` flow and the
    stage subflows all prepare through here; the last result is kept in this process.
    `loaded`: the source's dataset, already loaded by the caller (`tournament simulate`
    reloads a run's data and checks its fingerprint first)."""
    days = anchored_days(config, days)
    key = (config.digest(), data, data_kind, days, _source_stamp(data))
    if key not in _PREPARED:
        dataset = loaded if loaded is not None else load_dataset(data, days=days, kind=data_kind)
        validate_for_config(dataset, config)
        prepared = PreparedRun(config, dataset, windows_for(dataset, config.windows))
        _PREPARED.clear()            # one prepared run at a time is all a process needs
        _PREPARED[key] = prepared
    return _PREPARED[key]


def anchored_days(config: TournamentConfig, days: int | None) -> int | None:
    """`days` for a config: with anchored windows ([windows] start) the whole history is
    loaded (taking the last N days would move the grid every night), so --days is refused."""
    if not config.windows.start:
        return days
    if days:
        raise ConfigError(f"config error: give either --days {days} (the last {days} days) or "
                          f"[windows] start / --start {config.windows.start} (anchored "
                          "windows), not both")
    return 0


# ----------------------------------------------------------------------------- run names
def data_label(data: str, days: int | None) -> str:
    """`sp500 500d`, `synthetic:1000x100 1000d`, `prices.csv all` (days as the run uses
    them: tournament.data's default table when None, 0 = all)."""
    n = resolve_days(data, days)
    name = data if data == BUNDLED or data.startswith("synthetic") else Path(data).name
    return f"{name} {f'{n}d' if n else 'all'}"


def format_run_name(prefix: str, fidelity: str, data: str, days: int | None) -> str:
    return f"{prefix} {fidelity} {data_label(data, days)}"


def run_name_for(parameters: dict[str, Any], prefix: str = "tournament") -> str:
    """The name of a run with these (raw) parameters: `<prefix> <fidelity> <data> <days>`,
    every part the value the run will use (blocks, config file and defaults applied)."""
    names = ("config_path", "fidelity", "data", "data_kind", "days", "overrides", "grid",
             "data_source", "compute")
    try:
        inputs = resolve_inputs(**{k: parameters.get(k) for k in names})
        config = inputs.config()
        days = anchored_days(config, inputs.days)
        name = format_run_name(prefix, config.fidelity, inputs.data, days)
        return f"{name} from {config.windows.start}" if config.windows.start else name
    except Exception:   # invalid inputs: the run fails on them with the full message
        fidelity, data = parameters.get("fidelity"), parameters.get("data")
        return " ".join([prefix, fidelity if isinstance(fidelity, str) else "?",
                         data if isinstance(data, str) else BUNDLED])


def tournament_run_name() -> str:
    """flow_run_name callable: `<deployment or "tournament"> <fidelity> <data> <days>`,
    e.g. `nightly high sp500 500d`, `tournament low synthetic:1000x100 1000d`."""
    from prefect.runtime import flow_run

    from tasks.artifacts import current_deployment_name
    try:
        prefix = current_deployment_name() or "tournament"
    except Exception:
        prefix = "tournament"
    return run_name_for(dict(flow_run.parameters or {}), prefix)
