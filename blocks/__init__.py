"""Prefect Block types for the tournament (register: `prefect block register -m blocks.tournament_blocks`)."""
from .tournament_blocks import (ComputeBlock, DataSourceBlock, TournamentGridBlock,
                                resolve_blocks)

__all__ = ["TournamentGridBlock", "DataSourceBlock", "ComputeBlock", "resolve_blocks"]
