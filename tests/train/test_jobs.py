"""`ray job submit` to a token-auth head: the job fits into an absolute registry path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from train.registry import ModelRegistry

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXCLUDES = [".venv", ".git", "registry", "runs", "cache", "out", "**/__pycache__"]


def test_dashboard_api_refuses_without_the_token(ray_head) -> None:
    url = f"{ray_head.dashboard_url}/api/jobs/"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers=ray_head.auth_headers(), timeout=10).status_code == 200


def _wait(client, job_id: str, timeout_s: float) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            return status
        time.sleep(2)
    client.stop_job(job_id)
    return "TIMED OUT"


def test_submitted_training_job_lands_in_the_registry(
    ray_local, ray_head, ohlcv_dir: Path, tmp_path: Path
) -> None:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head.dashboard_url)  # token: RAY_AUTH_TOKEN
    registry = tmp_path / "registry"
    entrypoint = (
        f"python -m train fit --markets KRW-XRP --profile smoke --data-dir {ohlcv_dir} "
        f"--registry {registry} --storage-path {tmp_path / 'ray-results'}"
    )
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES},
    )
    status = _wait(client, job_id, timeout_s=420)
    logs = client.get_job_logs(job_id)
    assert status == "SUCCEEDED", f"job ended {status}:\n{logs[-3000:]}"
    assert "[fit KRW-XRP] fold 1" in logs, "no per-fold progress in the job's log"
    assert ModelRegistry(str(registry)).current("KRW-XRP") == "v0001"
