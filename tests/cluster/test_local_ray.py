"""`stop_head_group` stops the head it names and nothing else, and the CLI imports no Ray before
it has set the token (Ray reads it once, on import). No Ray is started here."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cluster.local_ray import HeadError, group_commands, stop_head_group

SLEEPER = "import time; time.sleep(120)"


def start_group(*extra: str) -> subprocess.Popen:
    """A process in a session (process group) of its own, as `start_head` starts the head."""
    return subprocess.Popen([sys.executable, "-c", SLEEPER, *extra], start_new_session=True)


def test_a_group_that_is_not_the_named_head_is_left_alone() -> None:
    other = start_group("--port=7001")
    try:
        with pytest.raises(HeadError, match="left alone"):
            stop_head_group(other.pid, 7002)
        time.sleep(0.5)
        assert other.poll() is None and group_commands(other.pid)
    finally:
        other.kill()
        other.wait()


def test_the_named_head_group_is_stopped_and_another_keeps_running(monkeypatch) -> None:
    # A narrow terminal (or a long install path) must not cut `--port=...` off the listing.
    monkeypatch.setenv("COLUMNS", "40")
    head, bystander = start_group("--port=7003"), start_group("--port=7004")
    try:
        assert stop_head_group(head.pid, 7003, grace_s=5)
        head.wait(timeout=10)
        assert not [c for c in group_commands(head.pid) if "<defunct>" not in c]
        assert bystander.poll() is None
        assert stop_head_group(head.pid, 7003) is False  # gone: nothing to stop
    finally:
        for process in (head, bystander):
            process.kill()
            process.wait()


def test_the_cli_imports_no_ray_before_it_sets_the_token() -> None:
    probe = "import sys, cluster.__main__; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
