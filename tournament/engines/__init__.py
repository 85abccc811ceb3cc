"""Optimisation engines: one file per library, looked up by name in tournament.registry."""
