"""The model registry as an operator and a serving replica use it: register, promote, list, roll
back, fetch, and what survives a crash. Bundle files are opaque bytes here on purpose: the registry
must not care what they hold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from features.exchange import InvalidMarketError, UnknownMarketError
from train import registry_fs
from train.registry import (
    CorruptRegistryError,
    InvalidBundleError,
    ModelRegistry,
    NoSuchVersionError,
    RegistryError,
    VersionStatus,
)
from train.registry_fs import RegistryFS
from train.report import format_versions

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKET = "KRW-BTC"
BUNDLE_FILES = {
    "lstm.pt": b"\x80\x02torch-weights" * 1000,
    "lightgbm.txt": b"tree\nversion=v4\n",
    "transform.json": b'{"mean": [0.0], "std": [1.0]}',
    "oos.parquet": b"PAR1" + bytes(range(256)) * 4 + b"PAR1",
}
ROOT_KINDS = ["path", "file_uri", "object_store"]


def make_registry(kind: str, base: Path) -> ModelRegistry:
    """Same registry contents reached three ways; `object_store` is a non-local pyarrow fs, so the
    registry takes its no-rename path (plain overwrite of CURRENT) as it would on S3 or GCS."""
    base.mkdir(parents=True, exist_ok=True)
    if kind == "path":
        return ModelRegistry(base / "models")
    if kind == "file_uri":
        return ModelRegistry((base / "models").as_uri())
    return ModelRegistry(
        "models", filesystem=pafs.SubTreeFileSystem(str(base), pafs.LocalFileSystem())
    )


@pytest.fixture(params=ROOT_KINDS)
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
    return make_registry(request.param, tmp_path / "store")


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A bundle as the trainer writes it locally, with its own metadata.json."""
    directory = tmp_path / "bundle"
    directory.mkdir()
    for name, data in BUNDLE_FILES.items():
        (directory / name).write_bytes(data)
    metadata = {"sequence_length": 48, "horizon": 1, "metrics": {"f1": 0.41, "accuracy": 0.52}}
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return directory


def market_dir(tmp_path: Path) -> Path:
    return tmp_path / "store" / "models" / MARKET


def statuses(registry: ModelRegistry) -> dict[str, VersionStatus]:
    return {info.version: info.status for info in registry.versions(MARKET)}


def crash_upload_after(monkeypatch: pytest.MonkeyPatch, files: int) -> None:
    """Make the copy of bundle files die after `files` of them, as a killed trainer would."""
    real_upload = RegistryFS.upload
    done = []

    def upload(self: RegistryFS, local_file: Path, path: str) -> None:
        if len(done) == files:
            raise OSError("simulated crash mid-register")
        real_upload(self, local_file, path)
        done.append(path)

    monkeypatch.setattr(RegistryFS, "upload", upload)


def test_register_promote_list_and_roll_back(registry: ModelRegistry, bundle_dir: Path) -> None:
    assert registry.register(MARKET, bundle_dir, {"note": "first"}) == "v0001"
    assert registry.register(MARKET, bundle_dir, {"note": "second"}) == "v0002"
    assert registry.markets() == [MARKET]
    assert registry.current(MARKET) is None  # registering never promotes
    assert statuses(registry) == {"v0001": "candidate", "v0002": "candidate"}

    registry.promote(MARKET, "v0001")
    registry.promote(MARKET, "v0002")
    assert registry.current(MARKET) == "v0002"
    assert registry.current_version_token(MARKET) == "v0002"
    assert statuses(registry) == {"v0001": "previous", "v0002": "current"}
    metadata = registry.read_metadata(MARKET)
    assert (metadata["market"], metadata["version"], metadata["note"]) == (
        MARKET,
        "v0002",
        "second",
    )
    assert metadata["sequence_length"] == 48 and metadata["created_at"]

    table = format_versions(registry.versions(MARKET))
    lines = table.splitlines()
    assert lines[0].split() == ["MARKET", "VERSION", "STATUS", "CREATED_AT", "SUMMARY"]
    assert lines[1].split()[:3] == [MARKET, "v0002", "current"]  # newest first
    assert "accuracy=0.52 f1=0.41" in lines[1]

    assert registry.rollback(MARKET) == "v0001"
    assert registry.current(MARKET) == "v0001"
    assert statuses(registry) == {"v0001": "current", "v0002": "retired"}
    with pytest.raises(NoSuchVersionError, match="v0001 has no earlier promoted version"):
        registry.rollback(MARKET)
    assert registry.current(MARKET) == "v0001"


def test_repeated_rollbacks_walk_back_through_promotions(tmp_path: Path, bundle_dir: Path) -> None:
    registry = make_registry("path", tmp_path / "store")
    for _ in range(3):
        registry.promote(MARKET, registry.register(MARKET, bundle_dir))
    registry.promote(MARKET, "v0001")  # promoting an old version again is one more step to undo
    assert [registry.rollback(MARKET) for _ in range(3)] == ["v0003", "v0002", "v0001"]
    with pytest.raises(NoSuchVersionError):
        registry.rollback(MARKET)


def test_rollback_before_any_promotion_says_so(registry: ModelRegistry, bundle_dir: Path) -> None:
    registry.register(MARKET, bundle_dir)
    with pytest.raises(NoSuchVersionError, match="no version has been promoted"):
        registry.rollback(MARKET)
    with pytest.raises(NoSuchVersionError, match="promote one of: v0001"):
        registry.bundle_path(MARKET)


def test_promote_refuses_unknown_version_naming_the_known_ones(
    registry: ModelRegistry, bundle_dir: Path
) -> None:
    registry.register(MARKET, bundle_dir)
    for bad in ("v0007", "../../etc", "latest"):
        with pytest.raises(NoSuchVersionError, match="known versions: v0001") as excinfo:
            registry.promote(MARKET, bad)
        assert repr(bad) in str(excinfo.value)
    assert registry.current_version_token(MARKET) is None


def test_unknown_market_names_the_known_ones(registry: ModelRegistry, bundle_dir: Path) -> None:
    registry.register(MARKET, bundle_dir)
    with pytest.raises(UnknownMarketError, match="'KRW-ETH'; known: KRW-BTC"):
        registry.versions("KRW-ETH")
    with pytest.raises(UnknownMarketError):
        registry.promote("KRW-ETH", "v0001")


@pytest.mark.parametrize("bad", ["../etc", "KRW-BTC/../x", "krw-btc", "", "KRW_BTC", "/abs"])
def test_bad_market_name_is_rejected_before_any_io(
    tmp_path: Path, bundle_dir: Path, bad: str
) -> None:
    registry = make_registry("path", tmp_path / "store")
    with pytest.raises(InvalidMarketError, match="invalid market name"):
        registry.register(bad, bundle_dir)
    with pytest.raises(InvalidMarketError):
        registry.current_version_token(bad)
    assert not (tmp_path / "store" / "models").exists()


def test_crash_mid_register_leaves_current_and_an_unpromotable_version(
    registry: ModelRegistry, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registry.promote(MARKET, registry.register(MARKET, bundle_dir))
    crash_upload_after(monkeypatch, files=2)
    with pytest.raises(OSError, match="simulated crash"):
        registry.register(MARKET, bundle_dir)
    monkeypatch.undo()

    assert registry.current(MARKET) == "v0001"
    partial = registry.versions(MARKET)[-1]
    assert (partial.version, partial.status, partial.complete) == ("v0002", "incomplete", False)
    with pytest.raises(CorruptRegistryError, match="v0002 is incomplete"):
        registry.promote(MARKET, "v0002")
    with pytest.raises(CorruptRegistryError):
        registry.fetch(MARKET, "v0002", dest_dir=tmp_path / "cache")
    assert registry.current(MARKET) == "v0001"
    assert registry.register(MARKET, bundle_dir) == "v0003"  # the partial number is not reused
    registry.promote(MARKET, "v0003")
    assert registry.rollback(MARKET) == "v0001"


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from train.registry import ModelRegistry
    from train.registry_fs import RegistryFS

    real_upload = RegistryFS.upload
    uploaded = []

    def upload(self, local_file, path):
        real_upload(self, local_file, path)
        uploaded.append(path)
        if len(uploaded) == 2:  # mid-bundle: tell the parent, then wait to be killed
            Path(sys.argv[3]).write_text("ready")
            time.sleep(60)

    RegistryFS.upload = upload
    ModelRegistry(sys.argv[1]).register("KRW-BTC", Path(sys.argv[2]))
    """
)


def test_killed_register_process_leaves_current_untouched(tmp_path: Path, bundle_dir: Path) -> None:
    root = tmp_path / "store" / "models"
    registry = ModelRegistry(root)
    registry.promote(MARKET, registry.register(MARKET, bundle_dir))
    ready = tmp_path / "ready"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(bundle_dir), str(ready)], cwd=REPO_ROOT
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert child.poll() is None, "the registering process died before the kill"
            assert time.monotonic() < deadline, "the registering process never reached the hook"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()

    assert (root / MARKET / "CURRENT").read_text() == "v0001\n"
    assert statuses(registry) == {"v0001": "current", "v0002": "incomplete"}
    with pytest.raises(CorruptRegistryError):
        registry.promote(MARKET, "v0002")


def test_crash_between_history_and_current_still_rolls_back_correctly(
    registry: ModelRegistry, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        registry.register(MARKET, bundle_dir)
    registry.promote(MARKET, "v0001")
    registry.promote(MARKET, "v0002")
    real_put = RegistryFS.put

    def put(self: RegistryFS, path: str, data: bytes, *, atomic: bool = False) -> None:
        if path.endswith("/CURRENT"):
            raise OSError("simulated crash before CURRENT was replaced")
        real_put(self, path, data, atomic=atomic)

    monkeypatch.setattr(RegistryFS, "put", put)
    with pytest.raises(OSError, match="simulated crash"):
        registry.promote(MARKET, "v0003")
    monkeypatch.undo()

    assert registry.current(MARKET) == "v0002"
    assert statuses(registry)["v0003"] == "retired"  # in history, never served
    assert registry.rollback(MARKET) == "v0001"


def test_fetch_copies_a_complete_bundle_for_a_loader(
    registry: ModelRegistry, bundle_dir: Path, tmp_path: Path
) -> None:
    registry.register(MARKET, bundle_dir)
    registry.promote(MARKET, registry.register(MARKET, bundle_dir, {"note": "served"}))
    cache = tmp_path / "node-cache"
    fetched = registry.fetch(MARKET, dest_dir=cache)
    assert fetched == cache / MARKET / "v0002"
    for name, data in BUNDLE_FILES.items():
        assert (fetched / name).read_bytes() == data
    assert json.loads((fetched / "metadata.json").read_text())["note"] == "served"
    assert (fetched / "_COMPLETE").is_file()
    assert registry.fetch(MARKET, dest_dir=cache) == fetched  # a complete copy is reused
    assert registry.fetch(MARKET, "v0001", dest_dir=cache) == cache / MARKET / "v0001"
    assert sorted(p.name for p in (cache / MARKET).iterdir()) == ["v0001", "v0002"]


def test_bundle_path_speaks_the_roots_language(tmp_path: Path, bundle_dir: Path) -> None:
    root = tmp_path / "models"
    for registry, expected in [
        (ModelRegistry(root), str(root / MARKET / "v0001")),
        (ModelRegistry(root.as_uri()), f"{root.as_uri()}/{MARKET}/v0001"),
    ]:
        if not registry.markets():
            registry.promote(MARKET, registry.register(MARKET, bundle_dir))
        assert registry.bundle_path(MARKET) == expected
        assert registry.bundle_path(MARKET, "v0001") == expected


@pytest.mark.parametrize("kind", ["path", "file_uri"])
def test_atomic_current_replace_leaves_no_temp_files(
    kind: str, tmp_path: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = make_registry(kind, tmp_path / "store")
    registry.register(MARKET, bundle_dir)
    registry.register(MARKET, bundle_dir)
    for version in ("v0001", "v0002", "v0001", "v0002"):
        registry.promote(MARKET, version)
    registry.rollback(MARKET)
    expected = ["CURRENT", "HISTORY.jsonl", "v0001", "v0002"]
    assert sorted(os.listdir(market_dir(tmp_path))) == expected

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(registry_fs.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        registry.promote(MARKET, "v0002")
    monkeypatch.undo()
    assert sorted(os.listdir(market_dir(tmp_path))) == expected
    assert registry.current(MARKET) == "v0001"


def test_object_store_root_overwrites_current_without_rename(
    tmp_path: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = make_registry("object_store", tmp_path / "store")

    def no_rename(*args: object) -> None:
        raise AssertionError("an object store has no rename")

    monkeypatch.setattr(registry_fs.os, "replace", no_rename)
    monkeypatch.setattr(registry_fs, "_replace_local", no_rename)
    registry.register(MARKET, bundle_dir)
    registry.promote(MARKET, registry.register(MARKET, bundle_dir))
    registry.promote(MARKET, "v0001")
    assert registry.rollback(MARKET) == "v0002"
    assert (market_dir(tmp_path) / "CURRENT").read_text() == "v0002\n"
    assert sorted(os.listdir(market_dir(tmp_path))) == [
        "CURRENT",
        "HISTORY.jsonl",
        "v0001",
        "v0002",
    ]


@pytest.mark.parametrize("kind", ["path", "file_uri"])
def test_readers_during_promotions_always_see_a_valid_version(
    kind: str, tmp_path: Path, bundle_dir: Path
) -> None:
    writer = make_registry(kind, tmp_path / "store")
    writer.register(MARKET, bundle_dir)
    writer.register(MARKET, bundle_dir)
    writer.promote(MARKET, "v0001")
    stop = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def read_loop() -> None:
        reader = make_registry(kind, tmp_path / "store")  # another replica, its own handle
        while not stop.is_set():
            try:
                version = reader.current(MARKET)
                assert reader.read_metadata(MARKET, version)["version"] == version
                seen.append(version or "")
            except BaseException as exc:  # any failure is reported by the main thread
                errors.append(exc)
                return

    readers = [threading.Thread(target=read_loop) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        for i in range(100):
            writer.promote(MARKET, ("v0002", "v0001")[i % 2])
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not errors, errors[0]
    assert seen and set(seen) <= {"v0001", "v0002"}


def test_corrupt_metadata_is_reported_with_its_path_and_kept(
    registry: ModelRegistry, bundle_dir: Path, tmp_path: Path
) -> None:
    registry.register(MARKET, bundle_dir)
    metadata_file = market_dir(tmp_path) / "v0001" / "metadata.json"
    metadata_file.write_text("{not json")
    with pytest.raises(CorruptRegistryError, match="metadata.json is not valid JSON") as excinfo:
        registry.read_metadata(MARKET, "v0001")
    assert f"{MARKET}/v0001/metadata.json" in str(excinfo.value)
    [info] = registry.versions(MARKET)
    assert info.problem and "metadata.json" in info.problem
    assert "! " in format_versions([info])
    with pytest.raises(CorruptRegistryError):
        registry.promote(MARKET, "v0001")
    assert metadata_file.read_text() == "{not json"  # nothing was repaired away
    assert registry.current_version_token(MARKET) is None


def test_corrupt_current_is_reported_and_promote_repairs_it(
    registry: ModelRegistry, bundle_dir: Path, tmp_path: Path
) -> None:
    registry.promote(MARKET, registry.register(MARKET, bundle_dir))
    current_file = market_dir(tmp_path) / "CURRENT"
    current_file.write_text("v0009\n")
    with pytest.raises(CorruptRegistryError, match="points at v0009") as excinfo:
        registry.current(MARKET)
    assert "known versions: v0001" in str(excinfo.value)
    current_file.write_text("garbage")
    with pytest.raises(CorruptRegistryError, match="'garbage', not a version name"):
        registry.fetch(MARKET, dest_dir=tmp_path / "cache")
    assert [i.status for i in registry.versions(MARKET)] == ["retired"]  # list still works
    registry.promote(MARKET, "v0001")
    assert registry.current(MARKET) == "v0001"


def test_register_rejects_bad_input_before_writing(
    registry: ModelRegistry, bundle_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidBundleError, match="not JSON-serialisable"):
        registry.register(MARKET, bundle_dir, {"trained_on": object()})
    with pytest.raises(InvalidBundleError, match="metadata says market 'KRW-ETH'"):
        registry.register(MARKET, bundle_dir, {"market": "KRW-ETH"})
    with pytest.raises(InvalidBundleError, match="does not exist"):
        registry.register(MARKET, tmp_path / "missing")
    assert registry.markets() == []
    assert issubclass(InvalidBundleError, RegistryError)


def test_format_versions_of_nothing() -> None:
    assert format_versions([]) == "(no versions)"
