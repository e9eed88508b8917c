"""Benchmarks, run from the project root as `python -m bench.<name>` (`make bench` runs features,
train and serve). Each prints ratios against a baseline measured in the same run; none is a test.

The markets and the candle folder are `configs/features.yaml`'s, as everywhere else.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from features.config import load_features_config

ROOT = Path(__file__).resolve().parents[1]
_FEATURES = load_features_config()
MARKETS: tuple[str, ...] = tuple(_FEATURES.markets)
DATA_DIR = Path(_FEATURES.resolve_data_dir())


def fit_smoke_registry(markets: Sequence[str], data_dir: Path, registry: Path) -> Path:
    """Smoke bundles for `markets`, fitted into `registry` by the real CLI (`python -m train fit
    --local --profile smoke`), which promotes a market's first fit: set-up, never timed."""
    command = [
        sys.executable, "-m", "train", "fit", "--local", "--profile", "smoke",
        "--markets", ",".join(markets), "--data-dir", str(data_dir), "--registry", str(registry),
    ]  # fmt: skip
    print(f"# fitting smoke bundles (set-up, not timed): {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fitting the smoke bundles failed:\n{done.stderr[-4000:]}")
    return registry
