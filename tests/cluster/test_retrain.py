"""Scheduled retraining: the retrainer submits `python -m train fit` as a Ray job; a failed job
changes nothing in the registry and is reported."""

from __future__ import annotations

import pytest
import ray

from cluster.retrain import RetrainJob, get_retrainer, start_retrainer
from train.registry import ModelRegistry

pytestmark = pytest.mark.slow


def test_a_failed_retraining_job_changes_nothing_and_is_reported(
    ray_local, ray_head, tmp_path
) -> None:
    registry = tmp_path / "registry"
    job = RetrainJob(["KRW-BTC"], str(tmp_path / "no-candles-here"), str(registry), "smoke")
    assert "python -m train fit --markets KRW-BTC --profile smoke" in job.entrypoint()
    retrainer = start_retrainer(ray_head.dashboard_url, job, every_s=3600)
    try:
        outcome = ray.get(retrainer.run_once.remote(), timeout=300)
        assert outcome["status"] == "FAILED", outcome
        assert "no-candles-here" in outcome["error"] and outcome["verdicts"] == []
        assert ModelRegistry(str(registry)).markets() == []
        history = ray.get(get_retrainer().status.remote(), timeout=30)["history"]
        assert history[-1]["job_id"] == outcome["job_id"]
    finally:
        ray.kill(retrainer, no_restart=True)


def test_a_held_out_span_stays_held_out_when_retraining() -> None:
    import shlex
    from datetime import datetime

    from train.__main__ import parse_args

    for tune in (False, True):
        job = RetrainJob(["KRW-BTC"], "/data", "/registry", "smoke", tune, "2025-09-16 08:00:00")
        args = parse_args(shlex.split(job.entrypoint())[3:])
        assert args.until == datetime(2025, 9, 16, 8) and args.markets == "KRW-BTC"
        assert args.command == ("tune" if tune else "fit") and args.registry == "/registry"
