"""Prefect tasks: thin wrappers that add caching, retries and names around core calls."""
