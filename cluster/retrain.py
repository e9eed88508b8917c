"""Scheduled retraining: a small detached actor submits `python -m train fit` as a Ray job.

The job itself registers the new bundle and lets the registry's promotion gate decide; a promotion
reaches Serve without downtime because every predictor replica watches CURRENT. A failed job, or a
model the gate finds worse, changes nothing; either way the outcome is kept and reported.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import ray

RETRAINER_NAME = "Retrainer"
NAMESPACE = "hybrid-trader"
VERDICT = re.compile(r"^(KRW-[A-Z0-9]+ v\d{4}: .*)$", re.MULTILINE)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass(frozen=True)
class RetrainJob:
    markets: list[str]
    data_dir: str  # absolute path or URI: the job runs wherever the cluster puts it
    registry: str
    profile: str = "quick"
    tune: bool = False
    until: str | None = None  # the newest candle to train on (KST), e.g. the first run's hold-out
    fresh_hours: float | None = None  # skip markets fitted this close to the newest candle
    max_concurrent: int = 4  # markets fitting at once

    def entrypoint(self) -> str:
        """`train fit`, or `train tune --registry` (which fits each market's winner) with tune."""
        until = f" --until {self.until.replace(' ', 'T')}" if self.until else ""
        base = (f"--markets {','.join(self.markets)} --profile {self.profile} "
                f"--data-dir {self.data_dir} --registry {self.registry}{until}")  # fmt: skip
        if self.tune:  # the tuner fits every market's winner; freshness does not apply
            return f"python -m train tune {base}"
        fresh = f" --fresh-hours {self.fresh_hours:g}" if self.fresh_hours is not None else ""
        return f"python -m train fit {base} --max-concurrent {self.max_concurrent}{fresh}"


def run_job(dashboard_url: str, job: RetrainJob, timeout_s: float = 6 * 3600) -> dict[str, Any]:
    """Submit one retraining job, wait for it, and say what the gate decided per market."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    started = time.time()
    job_id = client.submit_job(entrypoint=job.entrypoint())
    status = "PENDING"
    while time.time() - started < timeout_s:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            break
        time.sleep(5)
    logs = client.get_job_logs(job_id)
    return {
        "job_id": job_id,
        "status": status,
        "started": started,
        "ended": time.time(),
        "verdicts": VERDICT.findall(logs),
        "error": None if status == "SUCCEEDED" else logs[-1500:],
    }


@ray.remote(num_cpus=0, max_restarts=-1)
class Retrainer:
    """Runs `run_job` every `every_s` seconds; the first run comes one interval after start."""

    def __init__(self, dashboard_url: str, job: dict[str, Any], every_s: float) -> None:
        self.dashboard_url = dashboard_url
        self.job = RetrainJob(**job)
        self.every_s = every_s
        self.history: list[dict[str, Any]] = []
        self.next_run = time.time() + every_s
        self.stop_event = threading.Event()
        threading.Thread(target=self._schedule, daemon=True, name="retrain").start()

    def _schedule(self) -> None:
        while not self.stop_event.wait(max(0.0, self.next_run - time.time())):
            self.run_once()
            self.next_run = time.time() + self.every_s

    def run_once(self) -> dict[str, Any]:
        try:
            outcome = run_job(self.dashboard_url, self.job)
        except Exception as exc:  # noqa: BLE001 - a failed submission is reported, never fatal
            outcome = {"status": "NOT SUBMITTED", "error": str(exc), "verdicts": []}
        self.history = [*self.history[-19:], outcome]
        return outcome

    def status(self) -> dict[str, Any]:
        return {
            "job": asdict(self.job),
            "every_hours": self.every_s / 3600,
            "next_run": self.next_run,
            "history": self.history[-5:],
        }

    def set_markets(self, markets: list[str]) -> None:
        """The next runs fit these markets (a market added at runtime: `cluster add-market`)."""
        self.job = replace(self.job, markets=list(markets))

    def stop(self) -> None:
        self.stop_event.set()


def start_retrainer(dashboard_url: str, job: RetrainJob, every_s: float) -> Any:
    return Retrainer.options(
        name=RETRAINER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(dashboard_url, asdict(job), every_s)


def get_retrainer() -> Any:
    return ray.get_actor(RETRAINER_NAME, namespace=NAMESPACE)
