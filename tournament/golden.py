"""Digests of the default run, the guard for refactors that must not change a number.

`default_run_digests()` runs the default grid (bundled S&P 500 sample, default days, medium
fidelity) through the core pipeline and the statistics the leaderboard shows, and hashes
every column except wall-clock timings. `tests/test_golden.py` compares them with
`tests/data/golden_default.json`; after a change that moves numbers on purpose, regenerate
that file with `OPENBLAS_CORETYPE=Haswell python -m tournament.golden --write` and say why
in the commit message.

The digests are bit-exact, and OpenBLAS picks its kernels by CPU: an AVX-512 Intel CPU's
("SkylakeX") round differently from AMD's ("Zen") and AVX2 Intel's ("Haswell"), so the
default cube's weights differ in their last bits from one machine to the next. The digests
are recorded with the Haswell kernels (GOLDEN_BLAS_CORE; the test suite sets
OPENBLAS_CORETYPE before numpy loads), which AMD's Zen kernels match bit for bit.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

GOLDEN_FILE = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden_default.json"
TIMING_COLUMNS = ("solve_seconds", "sim_seconds")
GOLDEN_BLAS_CORE = "Haswell"
MATCHING_BLAS_CORES = ("Haswell", "Zen")      # measured to give the recorded digests


def blas_core() -> str | None:
    """The kernel set numpy's OpenBLAS runs in this process (None: no OpenBLAS found)."""
    from threadpoolctl import threadpool_info
    for info in threadpool_info():
        if info.get("internal_api") == "openblas":
            return info.get("architecture")
    return None


def frame_digests(frame: pd.DataFrame) -> dict[str, str]:
    """sha256 of each column's values (bit-exact for floats), timings left out."""
    out = {}
    for col in frame.columns:
        if col in TIMING_COLUMNS:
            continue
        values = frame[col]
        if values.dtype.kind == "f":
            data = np.ascontiguousarray(values.to_numpy(dtype=np.float64)).tobytes()
        else:
            data = "\x1f".join(map(str, values.tolist())).encode()
        out[col] = hashlib.sha256(data).hexdigest()[:16]
    return out


def default_run_digests(cube=None, dataset=None) -> dict[str, dict[str, str]]:
    from .config import load_config
    from .data import load_dataset
    from .outputs import compute_statistics
    from .stage1 import run_stage1
    from .stage2 import results_frame, run_stage2

    dataset = dataset if dataset is not None else load_dataset("sp500")
    config = load_config(fidelity="medium")
    cube = cube if cube is not None else run_stage1(dataset, config)
    sims = run_stage2(dataset, cube, config)
    results, returns = results_frame(sims, cube, dataset, config)
    board, confidence = compute_statistics(results, returns, periods=config.annualization)
    weights = np.ascontiguousarray(cube.weights, dtype=np.float64).tobytes()
    return {"cube_cells": frame_digests(cube.cells),
            "cube_weights": {"sha256": hashlib.sha256(weights).hexdigest()[:16]},
            "results": frame_digests(results),
            "returns": frame_digests(returns),
            "statistics": frame_digests(board),
            "confidence_settings": {k: str(v) for k, v in sorted(confidence.items())
                                    if not k.endswith("seconds")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN_FILE.name}")
    args = parser.parse_args()
    if args.write and blas_core() not in MATCHING_BLAS_CORES:
        raise SystemExit(f"OpenBLAS runs its {blas_core()} kernels here: rerun with "
                         f"OPENBLAS_CORETYPE={GOLDEN_BLAS_CORE} (see the module docstring)")
    digests = default_run_digests()
    if args.write:
        GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN_FILE.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN_FILE}")
    else:
        print(json.dumps(digests, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
