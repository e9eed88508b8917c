"""A replica's bundle scratch folder carries its host and process id; a new one removes this
host's folders of processes that have exited (SIGKILLed replicas cannot clean up) and nothing
else."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serve.model_slot import ModelSlot
from serve.scratch import HOST, scratch_dir, sweep_dead
from train.registry import ModelRegistry


def named(root: Path, name: str, pid: int, rest: str = "ab1_x9", host: str = HOST) -> Path:
    return root / f"bundles-{name}-{host}-{pid}-{rest}"


def exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


def test_the_sweep_removes_only_folders_of_exited_processes(tmp_path: Path, live_child) -> None:
    dead = named(tmp_path, "KRW-BTC", exited_pid())
    alive = named(tmp_path, "KRW-ETH", live_child)
    mine = named(tmp_path, "multiplexed", os.getpid())
    elsewhere = named(tmp_path, "KRW-SOL", exited_pid(), host="0123abcd")  # another container's
    unnamed = tmp_path / "bundles-KRW-XRP-qwe123"  # an older folder without host and process
    other = tmp_path / "other-123-abc"
    for folder in (dead, alive, mine, elsewhere, unnamed, other):
        (folder / "v0001").mkdir(parents=True)
    a_file = named(tmp_path, "file", exited_pid())
    a_file.write_text("not a folder")

    assert sweep_dead(tmp_path) == [dead]
    assert not dead.exists()
    assert all(f.is_dir() for f in (alive, mine, elsewhere, unnamed, other))
    assert a_file.read_text() == "not a folder"


def test_a_new_scratch_folder_names_its_process_and_sweeps_first(tmp_path: Path) -> None:
    dead = named(tmp_path, "KRW-SOL", exited_pid())
    dead.mkdir()
    scratch = scratch_dir("KRW-SOL", tmp_path)
    assert not dead.exists()
    assert Path(scratch.name).name.startswith(f"bundles-KRW-SOL-{HOST}-{os.getpid()}-")
    assert sweep_dead(tmp_path) == []  # this process's own folder stays
    scratch.cleanup()
    assert not Path(scratch.name).exists()


def test_a_model_slot_takes_its_scratch_folder_from_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the temp dir of this test only
    dead = named(tmp_path, "KRW-BTC", exited_pid(), "left_by_a_kill")
    dead.mkdir()
    slot = ModelSlot("KRW-BTC", ModelRegistry(str(tmp_path / "registry")), poll_s=60.0)
    try:
        assert not dead.exists()
        assert Path(slot._cache.name).parent == tmp_path
        assert Path(slot._cache.name).name.startswith(f"bundles-KRW-BTC-{HOST}-{os.getpid()}-")
    finally:
        slot.stop()
    assert not Path(slot._cache.name).exists()
