"""Names, errors, value types and pure rules of the model registry, and its `list` table.

The rules here (which version is PREVIOUS, where a rollback goes, what a history line must hold)
are pure functions over HISTORY.jsonl's lines, kept apart from `train.registry` so its storage
logic reads top-down. Import everything from `train.registry`, which re-exports it.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

COMPLETE_MARKER = "_COMPLETE"
METADATA_FILE = "metadata.json"
CURRENT_FILE = "CURRENT"
HISTORY_FILE = "HISTORY.jsonl"

# Upbit market codes (KRW-BTC, BTC-ETH, ...). Checked before a name becomes a path component, so
# "../x" or "a/b" can never reach the filesystem.
MARKET_PATTERN = re.compile(r"^[A-Z]{2,5}-[A-Z0-9]{2,10}$")
VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
METRIC_KEYS = ("metrics", "walk_forward_metrics", "oos_metrics")


class RegistryError(Exception):
    """Base of every error the registry raises on purpose; the message names what to look at."""


class InvalidMarketError(RegistryError, ValueError):
    """A market name that is not an Upbit market code."""


class UnknownMarketError(RegistryError, LookupError):
    """No bundle was ever registered for the market; the message lists the known markets."""


class UnknownVersionError(RegistryError, LookupError):
    """The market has no such version; the message lists the known versions."""


class IncompleteBundleError(RegistryError):
    """A version whose registration never finished (no `_COMPLETE`): never served or promoted."""


class InvalidBundleError(RegistryError, ValueError):
    """`register` was given something that is not a bundle it can store."""


class NoCurrentVersionError(RegistryError, LookupError):
    """The market has versions, but none was promoted yet."""


class CorruptCurrentError(RegistryError):
    """CURRENT holds something other than the name of a complete version."""


class CorruptMetadataError(RegistryError):
    """A metadata.json that is missing or is not a JSON object; the message names its path."""


class CorruptHistoryError(RegistryError):
    """HISTORY.jsonl has a line the registry did not write; the message names the line."""


class NothingToRollBackError(RegistryError):
    """Rollback asked for, but no earlier promoted version exists."""


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

    @property
    def summary(self) -> str:
        """A few headline metrics from the metadata, or the problem, in one short line."""
        if self.problem:
            return f"! {self.problem}"
        for key in METRIC_KEYS:
            metrics = self.metadata.get(key)
            if isinstance(metrics, dict):
                numbers = [(k, v) for k, v in metrics.items() if isinstance(v, int | float)]
                return " ".join(f"{k}={v:.4g}" for k, v in sorted(numbers)[:4])
        return ""


def check_market(market: str) -> str:
    """`market` itself if it is a valid market code, else InvalidMarketError."""
    if not isinstance(market, str) or not MARKET_PATTERN.fullmatch(market):
        raise InvalidMarketError(
            f"invalid market name {market!r}: expected an Upbit code like KRW-BTC"
            f" (pattern {MARKET_PATTERN.pattern})"
        )
    return market


def parse_version(name: str) -> int | None:
    """The number of a version name (`v0007` -> 7), or None for anything else."""
    match = VERSION_PATTERN.fullmatch(name) if isinstance(name, str) else None
    return int(match.group(1)) if match else None


def version_name(number: int) -> str:
    return f"v{number:04d}"


def format_versions(infos: list[VersionInfo]) -> str:
    """A plain-text table of versions for `python -m train list`, newest first."""
    if not infos:
        return "(no versions)"
    header = ("MARKET", "VERSION", "STATUS", "CREATED_AT", "SUMMARY")
    rows = [
        (i.market, i.version, i.status.value, i.created_at or "-", i.summary)
        for i in reversed(infos)
    ]
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


class ModelStore(Protocol):
    """What a model loader on any node needs from the registry; tests may pass a stand-in."""

    def current_version_token(self, market: str) -> str | None: ...

    def current(self, market: str) -> str | None: ...

    def fetch(self, market: str, version: str | None = None, *, dest_dir: Path) -> Path: ...

    def read_metadata(self, market: str, version: str | None = None) -> dict[str, Any]: ...


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


def parse_history(raw: bytes, where: str) -> list[dict[str, Any]]:
    """HISTORY.jsonl's lines, oldest first; a line the registry did not write is an error naming
    it, since guessing past it could roll back to the wrong model."""
    entries = []
    for number, line in enumerate(raw.decode(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptHistoryError(f"{where} line {number} is not JSON: {exc}") from exc
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("version"), str)
            and isinstance(entry.get("stack"), list)
        ):
            raise CorruptHistoryError(f"{where} line {number} lacks 'version' or 'stack'")
        entries.append(entry)
    return entries


def manifest_sizes(marker: bytes | None) -> dict[str, int] | None:
    """File sizes a `_COMPLETE` manifest vouches for, or None if it is not one we can read."""
    try:
        files = json.loads(marker or b"")["files"]
    except (ValueError, KeyError, TypeError):
        return None
    return dict(files) if isinstance(files, dict) else None
