"""The data directory (``ANALYTICS_DATA_DIR``) is owner-only: directories 0700, files 0600.

It holds secrets (the bootstrap API key, the IP salt) and every stored event (the embedded
ClickHouse, the embedded valkey's append-only file). At start the process umask becomes 077, so
whatever this process and its children (valkey-server inherits it) create there is owner-only,
whichever code creates it. A data dir found with group or other permission bits (made by an
earlier version, or by hand) is tightened at start: every entry in it that this user owns loses
them. What cannot be changed (another owner's, such as a volume's mount point) is logged as a
warning and the start goes on: refusing would stop a pod whose mounted volume is root-owned 0777
(Kubernetes' emptyDir), while the files in it are owner-only all the same.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

OWNER_ONLY_UMASK = 0o077
_GROUP_OTHER = 0o077


@dataclass
class Tightened:
    changed: int = 0
    not_ours: list[str] = field(default_factory=list)


def tighten(path: Path) -> Tightened:
    """Remove the group and other bits of ``path`` and of everything under it that we own.

    Symbolic links are neither followed nor changed (their own mode means nothing on Linux).
    """
    result = Tightened()
    uid = os.geteuid()

    def fix(entry: str) -> None:
        try:
            info = os.lstat(entry)
        except FileNotFoundError:
            return  # removed meanwhile
        if stat.S_ISLNK(info.st_mode) or not info.st_mode & _GROUP_OTHER:
            return
        if info.st_uid != uid:
            result.not_ours.append(entry)
            return
        try:
            os.chmod(entry, stat.S_IMODE(info.st_mode) & ~_GROUP_OTHER)
            result.changed += 1
        except OSError:
            result.not_ours.append(entry)

    fix(str(path))
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            fix(os.path.join(root, name))
    return result


def secure_data_dir(path: Path) -> None:
    """Make the process create owner-only files, and tighten what ``path`` already holds.

    The whole tree is walked at every start, not only when the folder itself is open to others:
    a file dropped into a 0700 folder by another tool is tightened too. The walk costs about 1 s
    per 100,000 entries on a busy 2-core machine.
    """
    os.umask(OWNER_ONLY_UMASK)
    if not path.exists():
        return  # made on first use (chdb, valkey, a generated secret), owner-only
    result = tighten(path)
    if result.changed:
        log.info("data dir made owner-only", path=str(path), entries=result.changed)
    if result.not_ours:
        log.warning(
            "data dir entries owned by another user keep their group/other permissions",
            path=str(path),
            entries=len(result.not_ours),
            first=result.not_ours[0],
        )
