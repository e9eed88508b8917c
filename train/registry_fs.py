"""The storage under the model registry: one pyarrow filesystem, the two ways to replace a file,
the registry's two file formats (a JSON object, a JSON-lines log), and copying a bundle directory
in (manifest last) and out (checked against the manifest).

Every node of a cluster must read the same models, so the registry root is a local path or any URI
`pyarrow.fs.FileSystem.from_uri` understands (`file://`, `s3://`, `gs://`, ...). Listing, reading
and copying go through pyarrow.fs and behave alike everywhere. Only replacing a small file differs:

- local disk: write a temp file beside the target, fsync it, `os.replace` it over the target (a
  rename is atomic, so a reader sees the old bytes or the new ones, never a torn file);
- object stores: there is no rename, but a single small PUT is atomic, so the object is overwritten.

Any filesystem other than `LocalFileSystem` (S3, GCS, a `SubTreeFileSystem`, ...) takes the object
store path, which is how tests exercise it without a cloud account.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

COMPLETE_MARKER = "_COMPLETE"
"""Written last into a bundle directory: the manifest (file name -> size) that vouches for it."""


class RegistryError(Exception):
    """Base of every error the registry raises on purpose; the message names what to look at."""


class CorruptRegistryError(RegistryError):
    """What is stored cannot be used: a version whose registration never finished, a copy that
    came out short, or a file the registry did not write. Nothing is repaired away."""


def _has_scheme(root: str) -> bool:
    return "://" in root


@dataclass(frozen=True)
class RegistryFS:
    """A registry root resolved to (filesystem, base path) and the few operations the registry uses.

    Paths handed to the methods are paths inside `fs` (build them with `path()`); `uri()` turns
    the same parts into an address a person or another node can use.
    """

    fs: pafs.FileSystem
    base: str
    root: str  # as the caller gave it, so `uri()` answers in the caller's terms
    local: bool  # fs paths are OS paths and a rename is atomic

    @classmethod
    def open(cls, root: str | Path, filesystem: pafs.FileSystem | None = None) -> RegistryFS:
        """Resolve `root`: a plain path (made absolute), a URI, or a path inside `filesystem`."""
        text = str(root)
        if filesystem is not None and not isinstance(filesystem, pafs.LocalFileSystem):
            fs, base = filesystem, text.rstrip("/")
        elif _has_scheme(text):
            fs, base = pafs.FileSystem.from_uri(text)
        else:
            text = str(Path(text).expanduser().resolve())
            fs, base = pafs.LocalFileSystem(), text
        return cls(
            fs=fs, base=base.rstrip("/"), root=text, local=isinstance(fs, pafs.LocalFileSystem)
        )

    def path(self, *parts: str) -> str:
        """The fs path of `parts` below the root."""
        return "/".join([self.base, *parts]) if self.base else "/".join(parts)

    def uri(self, *parts: str) -> str:
        """`parts` below the root as the caller addresses it: a path, or a URI keeping its query."""
        if not _has_scheme(self.root):
            return os.path.join(self.root, *parts) if parts else self.root
        split = urlsplit(self.root)
        path = "/".join([split.path.rstrip("/"), *parts])
        return urlunsplit((split.scheme, split.netloc, path, split.query, split.fragment))

    def read_bytes(self, path: str) -> bytes | None:
        """The whole file, or None when it does not exist (other errors propagate)."""
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.readall()
        except OSError:
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            raise

    def put(self, path: str, data: bytes, *, atomic: bool = False) -> None:
        """Write `data` at `path`; with `atomic`, no reader sees a partial file (module doc)."""
        if atomic and self.local:
            _replace_local(path, data)
            return
        self._ensure_parent(path)
        with self.fs.open_output_stream(path) as out:
            out.write(data)

    def read_json_object(self, *parts: str) -> dict[str, Any]:
        """The JSON object stored at `parts` below the root; CorruptRegistryError naming the file
        when it is missing or holds anything else."""
        where = self.uri(*parts)
        raw = self.read_bytes(self.path(*parts))
        if raw is None:
            raise CorruptRegistryError(f"{where} is missing")
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptRegistryError(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise CorruptRegistryError(f"{where} holds a {type(value).__name__}, not an object")
        return value

    def read_log(self, *parts: str, keys: Mapping[str, type]) -> list[dict[str, Any]]:
        """The lines of the JSON-lines log at `parts`, oldest first ([] when there is none); a line
        that is not an object with `keys` of their types is an error naming it, since guessing
        past a line the registry did not write could act on the wrong model."""
        raw = self.read_bytes(self.path(*parts)) or b""
        entries = []
        for number, line in enumerate(raw.decode(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorruptRegistryError(
                    f"{self.uri(*parts)} line {number} is not JSON: {exc}"
                ) from exc
            if not isinstance(entry, dict) or any(
                not isinstance(entry.get(k), kind) for k, kind in keys.items()
            ):
                raise CorruptRegistryError(f"{self.uri(*parts)} line {number} lacks {list(keys)}")
            entries.append(entry)
        return entries

    def append_log(self, *parts: str, entry: dict[str, Any]) -> None:
        """Add one line to the log at `parts`, replacing the file atomically."""
        path = self.path(*parts)
        raw = self.read_bytes(path) or b""
        if raw and not raw.endswith(b"\n"):
            raw += b"\n"
        self.put(path, raw + json.dumps(entry, sort_keys=True).encode() + b"\n", atomic=True)

    def list_dirs(self, path: str) -> list[str]:
        """Names of the directories directly under `path` ([] when `path` does not exist)."""
        selector = pafs.FileSelector(path, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)

    def existing_files(self, paths: list[str]) -> set[str]:
        """The subset of `paths` that are files, asked in one batched call."""
        infos = self.fs.get_file_info(paths) if paths else []
        return {info.path for info in infos if info.type == pafs.FileType.File}

    def is_dir(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def claim_dir(self, path: str) -> bool:
        """Create `path` if nothing is there yet; False when it already exists.

        On local disk `os.mkdir` makes the claim atomic, so two concurrent registrations of one
        market get different versions. Object stores have no such primitive: there the check is
        best effort, and registering one market is expected to have one writer at a time.
        """
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.mkdir(path)
            except FileExistsError:
                return False
            return True
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        self.fs.create_dir(path, recursive=True)
        return True

    def upload(self, local_file: Path, path: str) -> None:
        """Copy one local file to `path` (streamed, so model files of any size are fine)."""
        self._ensure_parent(path)
        pafs.copy_files(
            str(local_file),
            path,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs,
        )

    def download(self, path: str, local_file: Path) -> None:
        """Copy the file at `path` to `local_file`, creating its parent directory."""
        local_file.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            path,
            str(local_file),
            source_filesystem=self.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )

    def file_sizes(self, path: str) -> dict[str, int]:
        """Every file below `path` (recursively) as relative name -> size in bytes."""
        selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        prefix = path.rstrip("/") + "/"
        return {
            info.path.removeprefix(prefix): info.size
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        }

    def sync(self, paths: list[str]) -> None:
        """Flush files to disk before a completion marker vouches for them (no-op off local disk).

        Without it a power cut could keep the marker yet lose the data it vouches for.
        """
        if not self.local:
            return
        for path in paths:
            _fsync_path(path, os.O_RDONLY)
        for directory in sorted({os.path.dirname(p) for p in paths}):
            _fsync_path(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def write_bundle(
        self, bundle: tuple[str, ...], files: Mapping[str, Path], blobs: Mapping[str, bytes],
        manifest: dict[str, object],
    ) -> None:  # fmt: skip
        """Copy `files` and write `blobs` into the directory `bundle` (parts below the root), flush
        them, then write the manifest (`manifest` plus every file's size) as COMPLETE_MARKER: a
        crash before that last write leaves a directory no reader trusts."""
        written = []
        for name, source in files.items():
            written.append(self.path(*bundle, name))
            self.upload(source, written[-1])
        for name, data in blobs.items():
            written.append(self.path(*bundle, name))
            self.put(written[-1], data)
        self.sync(written)
        manifest = {**manifest, "files": self.file_sizes(self.path(*bundle))}
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        self.put(self.path(*bundle, COMPLETE_MARKER), text.encode(), atomic=True)

    def fetch_bundle(self, bundle: tuple[str, ...], target: Path) -> Path:
        """Copy the complete bundle directory `bundle` to the local `target` and return it.

        A bundle never changes once complete, so an existing complete copy is reused. The copy is
        assembled in a hidden sibling and renamed into place, so a loader never opens half a
        bundle, and each file is checked against the size its manifest vouches for.
        """
        if (target / COMPLETE_MARKER).is_file():
            return target
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.partial"
        try:
            self._download_bundle(bundle, staging)
            os.replace(staging, target)
        except OSError:
            if (target / COMPLETE_MARKER).is_file():  # another process fetched it first
                return target
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _download_bundle(self, bundle: tuple[str, ...], local_dir: Path) -> None:
        marker = self.read_bytes(self.path(*bundle, COMPLETE_MARKER))
        sizes = _manifest_sizes(marker) or self.file_sizes(self.path(*bundle))
        sizes.pop(COMPLETE_MARKER, None)
        for name, size in sizes.items():
            local = local_dir / name
            self.download(self.path(*bundle, name), local)
            if local.stat().st_size != size:
                raise CorruptRegistryError(
                    f"{self.uri(*bundle, name)}: fetched {local.stat().st_size} bytes, its"
                    f" manifest says {size}"
                )
        (local_dir / COMPLETE_MARKER).write_bytes(marker or b"{}\n")

    def _ensure_parent(self, path: str) -> None:
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            self.fs.create_dir(parent, recursive=True)


def _manifest_sizes(marker: bytes | None) -> dict[str, int] | None:
    """File sizes a COMPLETE_MARKER manifest vouches for, or None if it is not one we can read."""
    try:
        files = json.loads(marker or b"")["files"]
    except (ValueError, KeyError, TypeError):
        return None
    return dict(files) if isinstance(files, dict) else None


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_local(path: str, data: bytes) -> None:
    """Temp file in the same directory, fsync, `os.replace`, fsync the directory.

    The temp file is removed whatever goes wrong, so a failed replace leaves the old file and no
    debris; its dot-prefixed name never matches a market or version name while it exists.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_path(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
