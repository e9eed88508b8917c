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

A malformed market name is `features.exchange.InvalidMarketError`, a market without a directory
`UnknownMarketError`; whatever else the registry refuses is a `RegistryError` naming what to see.

The registry treats bundle files as opaque: it imports neither torch nor lightgbm.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from features.exchange import MARKET_PATTERN, UnknownMarketError, check_market
from train.registry_fs import COMPLETE_MARKER, CorruptRegistryError, RegistryError, RegistryFS

METADATA_FILE = "metadata.json"
CURRENT_FILE = "CURRENT"
HISTORY_FILE = "HISTORY.jsonl"
VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
MAX_ROLLBACK_DEPTH = 50  # versions remembered behind CURRENT; bounds each HISTORY line


class NoSuchVersionError(RegistryError, LookupError):
    """No version where one was asked for: an unknown name, none promoted yet, or nothing earlier
    to roll back to. The message lists what there is."""


class InvalidBundleError(RegistryError, ValueError):
    """`register` was given something that is not a bundle it can store."""


class VersionStatus(enum.StrEnum):
    """Where a version stands: CURRENT is served; PREVIOUS is where `rollback` goes; RETIRED was
    current once; CANDIDATE was never promoted; INCOMPLETE never finished registering."""

    CURRENT = "current"
    PREVIOUS = "previous"
    CANDIDATE = "candidate"
    RETIRED = "retired"
    INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class VersionInfo:
    """One row of `ModelRegistry.versions`: what an operator needs to pick a version to promote."""

    market: str
    version: str
    status: VersionStatus
    complete: bool
    created_at: str | None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    problem: str | None = None  # why the bundle is unusable, when it is


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def parse_version(name: str) -> int | None:
    """The number of a version name (`v0007` -> 7), or None for anything else."""
    match = VERSION_PATTERN.fullmatch(name) if isinstance(name, str) else None
    return int(match.group(1)) if match else None


def version_name(number: int) -> str:
    return f"v{number:04d}"


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
            done = marker in complete
            try:
                metadata, problem = self._read_metadata(market, name), None
            except CorruptRegistryError as exc:
                metadata, problem = {}, (str(exc) if done else "registration did not finish")
            created = metadata.get("created_at")
            status = version_status(name, done, token, stack, promoted)
            created_at = None if created is None else str(created)
            infos.append(VersionInfo(market, name, status, done, created_at, metadata, problem))
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
            raise CorruptRegistryError(f"{where} holds {token!r}, not a version name like v0001")
        try:
            self._require_complete(market, token)
        except RegistryError as exc:
            raise CorruptRegistryError(
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
        """Copy a complete bundle (CURRENT's by default) to `dest_dir/<market>/<version>/` and
        return that directory; a loader never sees half a copy (`RegistryFS.fetch_bundle`)."""
        version = self._resolve(market, version)
        return self._store.fetch_bundle((market, version), Path(dest_dir) / market / version)

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
        metadata_file = {METADATA_FILE: _json_bytes(merged)}
        manifest = {"market": market, "version": version, "completed_at": _now()}
        self._store.write_bundle((market, version), files, metadata_file, manifest)
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
            raise NoSuchVersionError(f"{market}: no version has been promoted yet")
        history = self._history(market)
        stack = rollback_stack(history, present)
        if not stack:
            raise NoSuchVersionError(
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
            raise UnknownMarketError(market, self.markets())
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
            raise CorruptRegistryError(
                f"{market} {version} is incomplete (no {COMPLETE_MARKER} in"
                f" {self._store.uri(market, version)}): its registration did not finish"
            )
        raise NoSuchVersionError(
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
            raise NoSuchVersionError(
                f"{market} has no promoted version yet; promote one of: {names}"
            )
        return present

    def _valid_current_or_none(self, market: str) -> str | None:
        try:
            return self.current(market)
        except CorruptRegistryError:
            return None

    def _read_metadata(self, market: str, version: str) -> dict[str, Any]:
        return self._store.read_json_object(market, version, METADATA_FILE)

    def _history(self, market: str) -> list[dict[str, Any]]:
        return self._store.read_log(market, HISTORY_FILE, keys={"version": str, "stack": list})

    def _write_pointer(
        self, market: str, action: str, version: str, previous: str | None, stack: list[str]
    ) -> None:
        """Append the history line, then replace CURRENT.

        History first: a crash between the two leaves a line for a version that never became
        current, which `rollback_stack` ignores because it starts from what CURRENT holds.
        """
        entry = {"at": _now(), "action": action, "version": version, "from": previous}
        self._store.append_log(market, HISTORY_FILE, entry={**entry, "stack": stack})
        current = self._store.path(market, CURRENT_FILE)
        self._store.put(current, f"{version}\n".encode(), atomic=True)

    def _claim_next_version(self, market: str) -> str:
        """One past the highest existing number (incomplete ones count, so nothing is reused)."""
        names = self._version_names(market)
        number = max((parse_version(n) or 0 for n in names), default=0) + 1
        while not self._store.claim_dir(self._store.path(market, version_name(number))):
            number += 1
        return version_name(number)


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
    own = local_dir / METADATA_FILE
    try:
        merged = {**(json.loads(own.read_text()) if own.is_file() else {}), **(metadata or {})}
        json.dumps(merged)
    except (TypeError, ValueError) as exc:
        raise InvalidBundleError(
            f"metadata for {market} ({own} and the values given) is not JSON-serialisable: {exc}"
        ) from exc
    if merged.get("market", market) != market:
        raise InvalidBundleError(
            f"metadata says market {merged['market']!r} but the bundle is registered as {market!r}"
        )
    return merged


def version_status(
    name: str, complete: bool, token: str | None, stack: list[str], promoted: set[str]
) -> VersionStatus:
    """Status of one version given CURRENT (`token`), its rollback stack and all promoted names."""
    if not complete:
        return VersionStatus.INCOMPLETE
    if name == token:
        return VersionStatus.CURRENT
    if stack and name == stack[-1]:
        return VersionStatus.PREVIOUS
    return VersionStatus.RETIRED if name in promoted else VersionStatus.CANDIDATE


def rollback_stack(history: list[dict[str, Any]], current: str | None) -> list[str]:
    """The rollback stack behind `current`: from the newest line that made it current.

    Keyed on CURRENT's actual content, a line whose CURRENT write never happened is ignored.
    """
    for entry in reversed(history):
        if entry["version"] == current:
            return list(entry["stack"])
    return []
