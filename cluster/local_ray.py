"""The one way this project starts a Ray head on this machine: `ray start --head --block` with the
dashboard on 127.0.0.1, the job server and token auth, in a process group of its own.

`python -m cluster up`, the test session (tests/conftest.py) and the benches all start their head
here. `ray.init()` alone starts no job server and no token check, so whatever must work the way a
real cluster does (`ray job submit`, `serve deploy`, the dashboard API) runs against such a head.
Its own process group is what lets `stop_head_group` take down exactly this head and its workers,
from this process or a later one (`cluster down`), and never another Ray on the same machine
(`ray stop` would stop every one).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from trading.upbit_broker import ACCESS_KEY_ENV, SECRET_KEY_ENV


class HeadError(RuntimeError):
    """The head did not come up; the message carries the tail of `ray start`'s output."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def auth_env(token: str) -> dict[str, str]:
    """The variables every Ray client of a token-auth head needs (CLI, SDK, `ray.init`)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def new_token() -> str:
    return secrets.token_hex(32)


def _ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")
    found = beside if beside.exists() else shutil.which("ray")
    if not found:
        raise HeadError("the `ray` command is not installed beside this Python")
    return str(found)


@dataclass
class LocalHead:
    """One running head; `gcs_address` for `ray.init`, `dashboard_url` for jobs and the browser.

    `pid` is the `ray start --block` process, the leader of the head's process group: a later
    process stops the head with `stop_head_group(pid, port)`."""

    gcs_address: str
    dashboard_url: str
    metrics_url: str  # Ray's Prometheus export of this node (built-in and custom metrics)
    token: str = field(repr=False)
    process: subprocess.Popen = field(repr=False)
    log_path: Path = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.gcs_address.rsplit(":", 1)[1])

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the head's process group, then SIGKILL what is left (gcs and raylet linger)."""
        _signal_group(self.process.pid, grace_s, reap=self.process.poll)
        if self.process.poll() is None:
            self.process.wait(timeout=grace_s)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's: never ours to signal (checked before)
    return True


def _signal_group(pgid: int, grace_s: float, reap: Callable[[], object] = lambda: None) -> None:
    """SIGTERM, then SIGKILL what is left; `reap` collects the leader when it is our child (a
    zombie still counts as a member of its group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(pgid):
            reap()
            time.sleep(0.2)


def group_commands(pgid: int) -> list[str]:
    """The command lines of every process in process group `pgid` (empty when it is gone)."""
    listing = subprocess.run(
        ["ps", "-ww", "-eo", "pgid=,args="], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    rows = (line.strip().split(None, 1) for line in listing.splitlines() if line.strip())
    return [row[1] for row in rows if len(row) == 2 and row[0] == str(pgid)]


def stop_head_group(pgid: int, port: int, grace_s: float = 10.0) -> bool:
    """Stop the head that `start_head` started as process group `pgid` with GCS port `port`.

    The group is signalled only when one of its processes is that head's `ray start` or GCS
    server (a recycled process id is left alone). Returns False when nothing of it was running.
    """
    commands = group_commands(pgid)
    if not commands:
        return False
    ours = [c for c in commands if f"--port={port}" in c or f"--gcs_server_port={port}" in c]
    if not ours:
        raise HeadError(
            f"process group {pgid} is not the Ray head on port {port} (it runs: {commands[0]}); "
            "left alone"
        )
    _signal_group(pgid, grace_s)
    return True


# What no Ray worker may inherit from the head's environment: the exchange keys reach only the
# trading loop's process, through its runtime environment (`trading.loop.start_loop(env=...)`).
LOOP_ONLY_ENV = (ACCESS_KEY_ENV, SECRET_KEY_ENV)


def head_env(environ: dict[str, str], token: str, extra: dict[str, str] | None = None) -> dict:
    """The head's environment: this one without the loop-only secrets, with token auth."""
    kept = {k: v for k, v in environ.items() if k not in LOOP_ONLY_ENV}
    env = {**kept, **auth_env(token), **(extra or {})}
    # Job drivers run `python ...` from the head's PATH: make it this environment's Python.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def start_head(
    num_cpus: int | None,
    *,
    token: str | None = None,
    log_dir: Path,
    port: int | None = None,
    dashboard_port: int | None = None,
    num_gpus: int | None = 0,
    timeout_s: float = 180.0,
    extra_env: dict[str, str] | None = None,
) -> LocalHead:
    """Start a head on 127.0.0.1 with token auth on; return once the dashboard answers with it.

    Ports left None are free ones; `num_cpus`/`num_gpus` None: what Ray detects. The head keeps
    running after this process exits (its own session); stop it with `LocalHead.stop` or
    `stop_head_group`.
    """
    token = token or new_token()
    port, dashboard_port = port or free_port(), dashboard_port or free_port()
    metrics_port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"ray-head-{port}.log"
    env = head_env(dict(os.environ), token, extra_env)
    command = [
        _ray_cli(), "start", "--head", "--block", "--disable-usage-stats",
        f"--port={port}", f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1",
        "--include-dashboard=true", f"--metrics-export-port={metrics_port}",
        # The job agent's default port (52365) is taken by any other head on this machine, and
        # then every job submission fails with "No available agent to submit job".
        f"--dashboard-agent-listen-port={free_port()}",
    ]  # fmt: skip
    command += [f"--num-cpus={num_cpus}"] if num_cpus is not None else []
    command += [f"--num-gpus={num_gpus}"] if num_gpus is not None else []
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    head = LocalHead(
        gcs_address=f"127.0.0.1:{port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        token=token,
        process=process,
        log_path=log_path,
    )
    try:
        _wait_for_dashboard(head, timeout_s)
    except HeadError:
        head.stop()
        raise
    return head


def _wait_for_dashboard(head: LocalHead, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            break
        try:
            reply = requests.get(
                f"{head.dashboard_url}/api/jobs/", headers=head.auth_headers(), timeout=2
            )
            if reply.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    tail = head.log_path.read_text(errors="replace")[-2000:]
    raise HeadError(
        f"the Ray head did not answer on {head.dashboard_url} in {timeout_s:.0f} s:\n{tail}"
    )
