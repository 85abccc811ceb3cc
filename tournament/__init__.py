"""Core of the 4D portfolio tournament: data, windows, selection, engines, cube, simulators,
metrics. Imports nothing from Prefect or Ray, so it runs in a notebook or a plain test.

    from tournament.data import load_dataset
    from tournament.config import load_config
    from tournament.pipeline import run_tournament
    result = run_tournament(load_dataset("sp500"), load_config(fidelity="low"))
"""
__version__ = "0.1.0"
