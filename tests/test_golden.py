"""The default run is bit-identical to its recorded digests (issue 13's guard for refactors).

Every column of the weights cube, the results, the daily returns and the statistics the
leaderboard shows, timings excepted. A change that moves numbers on purpose regenerates
`tests/data/golden_default.json` with `python -m tournament.golden --write` and says why.
"""
from __future__ import annotations

import json
import os

from tournament.golden import GOLDEN_FILE, MATCHING_BLAS_CORES, blas_core, default_run_digests


def test_default_run_matches_golden_digests(default_cube, sp500):
    # Bit-exact digests need the kernels they were recorded with (tests/conftest.py sets
    # OPENBLAS_CORETYPE before numpy loads; see tournament.golden).
    assert blas_core() in MATCHING_BLAS_CORES, (
        f"OpenBLAS runs its {blas_core()} kernels: the digests are recorded with "
        f"{'/'.join(MATCHING_BLAS_CORES)} ones (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')})")
    expected = json.loads(GOLDEN_FILE.read_text())
    actual = default_run_digests(cube=default_cube, dataset=sp500)
    changed = {f"{part}.{col}" for part in expected for col in expected[part]
               if actual.get(part, {}).get(col) != expected[part][col]}
    changed |= {f"{part}.{col}" for part in actual for col in actual[part]
                if col not in expected.get(part, {})}
    assert not changed, f"columns whose values changed: {sorted(changed)}"
