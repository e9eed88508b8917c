"""`python -m cluster ...` as a user runs it, for the tests that bring a system up on the
session's Ray head, and the clean-up after an `up` that failed half-way: what it started would
otherwise meet the next module's `up` (one loop per cluster) and fail that module too."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cluster(
    *args: str, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`env`: the child's whole environment (this process's when None)."""
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args], capture_output=True, text=True,
        timeout=timeout, cwd=PROJECT_ROOT, env=os.environ.copy() if env is None else env,
    )  # fmt: skip


def clean_after_failed_up() -> None:
    """Remove the keeper (it would start the loop again), then the loop, from the session's head;
    the ledger stays. The test process is connected to the head (`ray_local`)."""
    import ray
    from ray import serve

    from cluster.local import APPS
    from trading.loop import get_loop

    if APPS[1] in serve.status().applications:
        serve.delete(APPS[1])
    with contextlib.suppress(ValueError):  # ValueError: no loop was started
        ray.kill(get_loop(), no_restart=True)
