"""The model registry: versioned bundles per market, one CURRENT pointer, promote and roll back.

Layout under the root (a local path or any pyarrow.fs URI, so every node reads the same models)::

    <root>/<market>/v0001/           lstm.pt, lightgbm.txt, transform.json, oos.parquet, ...
                                     metadata.json, then _COMPLETE (the manifest) last
    <root>/<market>/CURRENT          "v0003\\n": the version Serve loads
    <root>/<market>/HISTORY.jsonl    one line per promotion or rollback, oldest first

What a reader may rely on:
- a bundle is written file by file and `_COMPLETE` (its manifest) last; a version without it is
  never served, promoted or fetched, so a crash mid-register leaves only an *incomplete* version;
- CURRENT is replaced atomically (see `registry_fs`) and only ever names a complete version;
- HISTORY.jsonl is written before CURRENT, and each line carries the whole rollback stack, so a
  crash between the two writes still leaves `rollback` going to the right version.

The registry treats bundle files as opaque: it imports neither torch nor lightgbm.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from train.registry_fs import RegistryFS
from train.registry_types import (
    COMPLETE_MARKER,
    CURRENT_FILE,
    HISTORY_FILE,
    MARKET_PATTERN,
    METADATA_FILE,
    CorruptCurrentError,
    CorruptHistoryError,
    CorruptMetadataError,
    IncompleteBundleError,
    InvalidBundleError,
    InvalidMarketError,
    ModelStore,
    NoCurrentVersionError,
    NothingToRollBackError,
    RegistryError,
    UnknownMarketError,
    UnknownVersionError,
    VersionInfo,
    VersionStatus,
    check_market,
    format_versions,
    manifest_sizes,
    parse_history,
    parse_version,
    rollback_stack,
    version_name,
    version_status,
)

__all__ = [
    "CorruptCurrentError",
    "CorruptHistoryError",
    "CorruptMetadataError",
    "IncompleteBundleError",
    "InvalidBundleError",
    "InvalidMarketError",
    "ModelRegistry",
    "ModelStore",
    "NoCurrentVersionError",
    "NothingToRollBackError",
    "RegistryError",
    "UnknownMarketError",
    "UnknownVersionError",
    "VersionInfo",
    "VersionStatus",
    "format_versions",
]

MAX_ROLLBACK_DEPTH = 50  # versions remembered behind CURRENT; bounds each HISTORY line


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


class ModelRegistry:
    """Versioned model bundles per market under one root; see the module docstring for the layout.

    Operator commands (`register`, `promote`, `rollback`) are expected to run one at a time per
    market; reads (`current`, `fetch`, ...) may run anywhere, at any time, concurrently with them.
    """

    def __init__(self, root: str | Path, *, filesystem: pafs.FileSystem | None = None) -> None:
        """`root` is a path or a URI; with `filesystem` (a pyarrow FileSystem), a path inside it."""
        self._store = RegistryFS.open(root, filesystem)

    def __repr__(self) -> str:
        return f"ModelRegistry({self._store.root!r})"

    # -- reading ------------------------------------------------------------------------------

    def markets(self) -> list[str]:
        """Markets that have a directory under the root, sorted."""
        names = self._store.list_dirs(self._store.base)
        return [name for name in names if MARKET_PATTERN.fullmatch(name)]

    def versions(self, market: str) -> list[VersionInfo]:
        """Every version of `market`, oldest first, incomplete ones included and flagged.

        A corrupt metadata.json or CURRENT does not hide the list; it shows up as `problem`.
        """
        names = self._version_names(self._require_market(market))
        markers = [self._store.path(market, name, COMPLETE_MARKER) for name in names]
        complete = self._store.existing_files(markers)
        token = self.current_version_token(market)
        history = self._history(market)
        stack = rollback_stack(history, token)
        promoted = {entry["version"] for entry in history}
        infos = []
        for name, marker in zip(names, markers, strict=True):
            is_complete = marker in complete
            metadata, problem = self._metadata_or_problem(market, name, is_complete)
            status = version_status(name, is_complete, token, stack, promoted)
            created_at = metadata.get("created_at")
            infos.append(
                VersionInfo(
                    market=market,
                    version=name,
                    status=status,
                    complete=is_complete,
                    created_at=str(created_at) if created_at is not None else None,
                    metadata=metadata,
                    problem=problem,
                )
            )
        return infos

    def current_version_token(self, market: str) -> str | None:
        """CURRENT's content (one small read, no validation): poll it to notice a promotion."""
        raw = self._store.read_bytes(self._store.path(check_market(market), CURRENT_FILE))
        return raw.decode(errors="replace").strip() if raw is not None else None

    def current(self, market: str) -> str | None:
        """The promoted version, None if none was ever promoted; raises if CURRENT is corrupt."""
        self._require_market(market)
        token = self.current_version_token(market)
        if token is None:
            return None
        where = self._store.uri(market, CURRENT_FILE)
        if parse_version(token) is None:
            raise CorruptCurrentError(f"{where} holds {token!r}, not a version name like v0001")
        try:
            self._require_complete(market, token)
        except RegistryError as exc:
            raise CorruptCurrentError(
                f"{where} points at {token}, which is unusable: {exc}"
            ) from exc
        return token

    def bundle_path(self, market: str, version: str | None = None) -> str:
        """Path or URI of a complete bundle directory; CURRENT's when `version` is None."""
        version = self._resolve(market, version)
        return self._store.uri(market, version)

    def read_metadata(self, market: str, version: str | None = None) -> dict[str, Any]:
        """metadata.json of a complete bundle (CURRENT's by default), as a dict."""
        version = self._resolve(market, version)
        return self._read_metadata(market, version)

    def fetch(self, market: str, version: str | None = None, *, dest_dir: Path) -> Path:
        """Copy a complete bundle to `dest_dir/<market>/<version>/` and return that directory.

        Versions never change once complete, so an existing complete copy is reused. The copy is
        assembled in a hidden sibling and renamed into place, so a loader never opens half a bundle.
        """
        version = self._resolve(market, version)
        target = Path(dest_dir) / market / version
        if (target / COMPLETE_MARKER).is_file():
            return target
        staging = target.parent / f".{version}.{uuid.uuid4().hex}.partial"
        try:
            self._download_bundle(market, version, staging)
            os.replace(staging, target)
        except OSError:
            if (target / COMPLETE_MARKER).is_file():  # another process fetched it first
                return target
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    # -- writing ------------------------------------------------------------------------------

    def register(
        self, market: str, local_bundle_dir: Path, metadata: dict[str, Any] | None = None
    ) -> str:
        """Store a locally written bundle as the next version, a candidate; CURRENT is untouched.

        metadata.json is the bundle's own file (if any) updated with `metadata`, plus `market`,
        `version` and `created_at` (kept if given). Files are copied first and `_COMPLETE` last.
        """
        market = check_market(market)
        files = _bundle_files(Path(local_bundle_dir))
        merged = _merged_metadata(Path(local_bundle_dir), metadata, market)
        version = self._claim_next_version(market)
        merged.update(market=market, version=version)
        merged.setdefault("created_at", _now())
        written = []
        for relative, source in files.items():
            written.append(self._store.path(market, version, relative))
            self._store.upload(source, written[-1])
        written.append(self._store.path(market, version, METADATA_FILE))
        self._store.put(written[-1], _json_bytes(merged))
        self._store.sync(written)
        sizes = self._store.file_sizes(self._store.path(market, version))
        manifest = {"market": market, "version": version, "completed_at": _now(), "files": sizes}
        self._store.put(
            self._store.path(market, version, COMPLETE_MARKER), _json_bytes(manifest), atomic=True
        )
        return version

    def promote(self, market: str, version: str) -> None:
        """Make `version` CURRENT; refuses unknown, incomplete or unreadable bundles.

        Promoting the version that is already current changes nothing. A corrupt CURRENT does not
        block a promotion: promoting is how an operator repairs it.
        """
        self._require_complete(self._require_market(market), version)
        self._read_metadata(market, version)
        present = self._valid_current_or_none(market)
        if present == version:
            return
        history = self._history(market)
        stack = [*rollback_stack(history, present), present] if present else []
        self._write_pointer(market, "promote", version, present, stack[-MAX_ROLLBACK_DEPTH:])

    def rollback(self, market: str) -> str:
        """Point CURRENT back at the version that was current before the present one; return it.

        Repeated rollbacks walk further back through earlier promotions.
        """
        present = self.current(market)
        if present is None:
            raise NothingToRollBackError(f"{market}: no version has been promoted yet")
        history = self._history(market)
        stack = rollback_stack(history, present)
        if not stack:
            raise NothingToRollBackError(
                f"{market}: {present} has no earlier promoted version to roll back to"
                f" (history: {self._store.uri(market, HISTORY_FILE)})"
            )
        target = stack[-1]
        self._require_complete(market, target)
        self._write_pointer(market, "rollback", target, present, stack[:-1])
        return target

    # -- internals ----------------------------------------------------------------------------

    def _require_market(self, market: str) -> str:
        market = check_market(market)
        if not self._store.is_dir(self._store.path(market)):
            known = ", ".join(self.markets()) or "none"
            raise UnknownMarketError(f"unknown market {market!r}; known markets: {known}")
        return market

    def _version_names(self, market: str) -> list[str]:
        names = self._store.list_dirs(self._store.path(market))
        numbered = [(parse_version(name), name) for name in names]
        return [name for number, name in sorted((n, s) for n, s in numbered if n is not None)]

    def _require_complete(self, market: str, version: str) -> None:
        marker = self._store.path(market, version, COMPLETE_MARKER)
        if parse_version(version) is not None and self._store.existing_files([marker]):
            return
        known = self._version_names(market)
        if version in known:
            raise IncompleteBundleError(
                f"{market} {version} is incomplete (no {COMPLETE_MARKER} in"
                f" {self._store.uri(market, version)}): its registration did not finish"
            )
        raise UnknownVersionError(
            f"{market} has no version {version!r}; known versions: {', '.join(known) or 'none'}"
        )

    def _resolve(self, market: str, version: str | None) -> str:
        """`version` checked complete, or CURRENT's version when None."""
        if version is not None:
            self._require_complete(self._require_market(market), version)
            return version
        present = self.current(market)
        if present is None:
            names = ", ".join(self._version_names(market)) or "none"
            raise NoCurrentVersionError(
                f"{market} has no promoted version yet; promote one of: {names}"
            )
        return present

    def _valid_current_or_none(self, market: str) -> str | None:
        try:
            return self.current(market)
        except CorruptCurrentError:
            return None

    def _read_metadata(self, market: str, version: str) -> dict[str, Any]:
        path = self._store.path(market, version, METADATA_FILE)
        where = self._store.uri(market, version, METADATA_FILE)
        raw = self._store.read_bytes(path)
        if raw is None:
            raise CorruptMetadataError(f"{where} is missing")
        try:
            metadata = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptMetadataError(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(metadata, dict):
            raise CorruptMetadataError(f"{where} holds a {type(metadata).__name__}, not an object")
        return metadata

    def _metadata_or_problem(
        self, market: str, version: str, complete: bool
    ) -> tuple[dict[str, Any], str | None]:
        try:
            return self._read_metadata(market, version), None
        except CorruptMetadataError as exc:
            return {}, (str(exc) if complete else "registration did not finish")

    def _history(self, market: str) -> list[dict[str, Any]]:
        raw = self._store.read_bytes(self._store.path(market, HISTORY_FILE))
        where = self._store.uri(market, HISTORY_FILE)
        return parse_history(raw or b"", where)

    def _write_pointer(
        self, market: str, action: str, version: str, previous: str | None, stack: list[str]
    ) -> None:
        """Append the history line, then replace CURRENT.

        History first: a crash between the two leaves a line for a version that never became
        current, which `rollback_stack` ignores because it starts from what CURRENT holds.
        """
        entry = {"at": _now(), "action": action, "version": version, "from": previous}
        line = json.dumps({**entry, "stack": stack}, sort_keys=True).encode() + b"\n"
        history_path = self._store.path(market, HISTORY_FILE)
        raw = self._store.read_bytes(history_path) or b""
        if raw and not raw.endswith(b"\n"):
            raw += b"\n"
        self._store.put(history_path, raw + line, atomic=True)
        self._store.put(
            self._store.path(market, CURRENT_FILE), f"{version}\n".encode(), atomic=True
        )

    def _claim_next_version(self, market: str) -> str:
        """One past the highest existing number (incomplete ones count, so nothing is reused)."""
        names = self._version_names(market)
        number = max((parse_version(n) or 0 for n in names), default=0) + 1
        while not self._store.claim_dir(self._store.path(market, version_name(number))):
            number += 1
        return version_name(number)

    def _download_bundle(self, market: str, version: str, staging: Path) -> None:
        bundle_dir = self._store.path(market, version)
        marker = self._store.read_bytes(self._store.path(market, version, COMPLETE_MARKER))
        sizes = manifest_sizes(marker) or self._store.file_sizes(bundle_dir)
        sizes.pop(COMPLETE_MARKER, None)
        for relative, size in sizes.items():
            local = staging / relative
            self._store.download(f"{bundle_dir}/{relative}", local)
            if local.stat().st_size != size:
                raise IncompleteBundleError(
                    f"{self._store.uri(market, version, relative)}: fetched {local.stat().st_size}"
                    f" bytes, manifest says {size}"
                )
        (staging / COMPLETE_MARKER).write_bytes(marker or b"{}\n")


def _bundle_files(local_dir: Path) -> dict[str, Path]:
    """Files to copy, by relative name; metadata.json is rewritten and `_COMPLETE` is ours."""
    if not local_dir.is_dir():
        raise InvalidBundleError(f"bundle directory {local_dir} does not exist")
    files = {
        path.relative_to(local_dir).as_posix(): path
        for path in sorted(local_dir.rglob("*"))
        if path.is_file()
    }
    files.pop(METADATA_FILE, None)
    if files.pop(COMPLETE_MARKER, None) is not None:
        raise InvalidBundleError(f"{local_dir} holds a {COMPLETE_MARKER}, a name the registry owns")
    return files


def _merged_metadata(
    local_dir: Path, metadata: dict[str, Any] | None, market: str
) -> dict[str, Any]:
    """The bundle's metadata.json updated with `metadata`; checked JSON-serialisable up front,
    so a bad value fails before anything is written."""
    merged: dict[str, Any] = {}
    own = local_dir / METADATA_FILE
    if own.is_file():
        try:
            merged = dict(json.loads(own.read_text()))
        except (ValueError, TypeError) as exc:
            raise CorruptMetadataError(f"{own} is not a JSON object: {exc}") from exc
    merged.update(metadata or {})
    if merged.get("market", market) != market:
        raise InvalidBundleError(
            f"metadata says market {merged['market']!r} but the bundle is registered as {market!r}"
        )
    try:
        json.dumps(merged)
    except (TypeError, ValueError) as exc:
        raise InvalidBundleError(f"metadata for {market} is not JSON-serialisable: {exc}") from exc
    return merged
