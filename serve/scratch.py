"""Scratch folders for the bundles a replica fetches from the registry.

A replica that Serve or a person SIGKILLs cannot run its TemporaryDirectory's clean-up, so its
folder stayed in the temp dir for good (a hundred and more after a day of tests). Each folder now
carries its host and process id, and a new one first removes this host's folders whose process is
gone. A folder whose process is alive, whose id cannot be checked, or that another host made (a
container sharing the temp dir sees other process ids) is left alone: at worst one is kept too
long, never one in use removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

PREFIX = "bundles-"
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# bundles-<name>-<host>-<pid>-<tempfile's random part: letters, digits, underscores, no hyphen>
_NAME = re.compile(rf"{PREFIX}(?P<name>.+)-(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)-[a-z0-9_]+")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True


def sweep_dead(root: Path | str | None = None) -> list[Path]:
    """Remove the scratch folders under `root` (the temp dir) whose process has exited."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        match = _NAME.fullmatch(path.name)
        if match is None or match["host"] != HOST or not path.is_dir():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)  # another user's folder stays: not ours to remove
        if not path.exists():
            removed.append(path)
    return removed


def scratch_dir(name: str, root: Path | str | None = None) -> tempfile.TemporaryDirectory:
    """A new scratch folder for `name` (a market, or the multiplexed pool), after the sweep."""
    sweep_dead(root)
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{name}-{HOST}-{os.getpid()}-", dir=root)
