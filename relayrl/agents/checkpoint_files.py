"""Atomic checkpoint directories: write to a temp directory, swap it into place, clean up after killed saves.

A save writes ``.tmp-NAME-PID-HOST-XXXXXXXX`` next to the checkpoint and swaps it into place with one
``renameat2(RENAME_EXCHANGE)`` where Linux offers it, otherwise with two renames (the previous checkpoint goes
to ``NAME.old-PID-HOST`` in between, where readers look for it). ``remove_stale_dirs`` removes what killed saves
left: only directories named by this scheme, holding nothing but checkpoint files, whose process is dead (or
that are over STALE_AFTER_S old), and never an ``.old-`` directory that is the only copy of its checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import time
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
# A temp or .old- directory this old is abandoned even if its PID is alive (reused) or on another host.
STALE_AFTER_S = 3600.0


def _move_into_place(tmp: str, path: str) -> None:
    parent = os.path.dirname(path)
    if _exchange(tmp, path):  # one atomic step: path is never missing; tmp now holds the previous checkpoint
        _fsync(parent)
        _remove_dir(tmp)
        return
    old = None
    if os.path.lexists(path):
        old = f"{path}.old-{os.getpid()}-{_host_tag()}"
        if os.path.lexists(old):
            _remove_dir(old)  # path is there and complete: an older copy is of no use
        os.replace(path, old)
    os.replace(tmp, path)  # a kill between the two renames leaves path.old-PID-HOST, which readers find
    _fsync(parent)
    if old:
        _remove_dir(old)


def _exchange(src: str, dst: str) -> bool:
    """Atomically swaps two existing paths (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    libc = _libc()
    if libc is None or not os.path.lexists(dst):
        return False
    import ctypes

    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOENT, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False  # the file system cannot exchange (or dst just went away): two renames do
    raise OSError(err, os.strerror(err), dst)


@lru_cache(maxsize=1)
def _libc() -> Any:
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "renameat2") else None
    except OSError:
        return None


def _write_durably(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: str) -> None:
    """fsync a file or a directory (so a rename in it survives a power cut); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_dir(path: str) -> None:
    # The manifest goes first: a directory whose removal is interrupted never passes for a checkpoint.
    try:
        os.remove(os.path.join(path, MANIFEST))
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)


# --- what killed saves leave behind --------------------------------------------------------------------------
_TMP_RE = re.compile(r"\.tmp-(?P<name>.+)-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[a-z0-9_]{8}")
_LEGACY_TMP_RE = re.compile(r"\.tmp-(?P<name>.+)-[a-z0-9_]{8}")  # before PIDs were in the name: age only
_OLD_RE = re.compile(r"(?P<name>.+)\.old-(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{8}))?")


def remove_stale_dirs(parent: str) -> list[str]:
    """Removes the temp and ``.old-`` directories that killed saves left in ``parent``; returns their paths.

    Only directories named by this module's scheme and holding nothing but checkpoint files are candidates;
    one goes if its process (PID on this host) is dead or it is older than STALE_AFTER_S, so a concurrent
    save of a live process keeps its directory. ``NAME.old-*`` goes only while ``NAME`` is a checkpoint:
    otherwise it is the only copy (see checkpoint_dir). Failures to remove are logged, never raised.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        owner = _stale_owner(parent, entry.name)
        if owner is False:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or not _only_checkpoint_files(entry.path):
                continue
            if not _abandoned(owner, now - entry.stat(follow_symlinks=False).st_mtime):
                continue
            _remove_dir(entry.path)
        except OSError as e:
            logger.debug("could not remove stale checkpoint directory %s: %s", entry.path, e)
            continue
        if not os.path.lexists(entry.path):
            removed.append(entry.path)
    return removed


def _stale_owner(parent: str, name: str) -> Any:
    """``(pid, host_tag)`` of a directory named by a save, None if the name has no owner, False if not ours."""
    m = _TMP_RE.fullmatch(name)
    if m:
        return int(m["pid"]), m["host"]
    if _LEGACY_TMP_RE.fullmatch(name):
        return None
    m = _OLD_RE.fullmatch(name)
    if m and os.path.isfile(os.path.join(parent, m["name"], MANIFEST)):
        return int(m["pid"]), m["host"] or _host_tag()
    return False


def _only_checkpoint_files(path: str) -> bool:
    with os.scandir(path) as it:
        return all(e.name in (MANIFEST, TENSORS) and e.is_file(follow_symlinks=False) for e in it)


def _abandoned(owner: tuple[int, str] | None, age_s: float) -> bool:
    if age_s > STALE_AFTER_S:
        return True
    if owner is None:
        return False
    pid, host = owner
    if host != _host_tag() or pid == os.getpid():
        return False  # another machine's save, or one of this process (another thread): age decides
    return not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix" or pid <= 0:
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


@lru_cache(maxsize=1)
def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


# --- reading -------------------------------------------------------------------------------------------------
