"""Stage 2 simulators: one file per simulator, looked up by name in tournament.registry."""
