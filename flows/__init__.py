"""Prefect flows: the parent tournament flow and its two Ray-backed subflows."""
