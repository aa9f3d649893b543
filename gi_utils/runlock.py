"""One writer per run folder: a lock file, torch-free.

Two trainings started on the same run folder (two terminals, a notebook and ``make``, a
launcher started twice) would write ``last.pt``, ``history.csv`` and the best weights over
each other. :func:`run_lock` makes the second one stop at once with :class:`RunLockedError`.

The lock is ``FOLDER/.lock``, created atomically (``os.open`` with ``O_CREAT | O_EXCL``)
and holding JSON ``{"pid", "host", "started", "create_time", "token"}``. A lock whose
process is gone (``psutil.pid_exists`` is false on this host, or the pid now belongs to a
process started at another time) or whose file is unreadable is stale: it is taken over
with a warning. A lock of another host cannot be checked and is respected; the message
says which file to delete once that run is known to be gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from gi_utils.atomic import disk_full_errno, disk_full_error

__all__ = ["LOCK_NAME", "RunLockedError", "run_lock", "read_lock"]

#: The lock file's name inside the run folder.
LOCK_NAME: str = ".lock"
#: An empty or unreadable lock file younger than this may be one being written right now.
_FRESH_S: float = 10.0
#: Attempts to create the lock after moving stale ones aside.
_ATTEMPTS: int = 5
#: Tokens of the locks this process holds (a lock with our pid but another token is stale).
_HELD: set[str] = set()


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


def read_lock(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record of a lock file, or ``None`` when it is missing, unreadable or not a lock.

    Args:
        path: the lock file (``FOLDER/.lock``).
    """
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    pid = record.get("pid") if isinstance(record, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    return record


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder/.lock`` for the duration of the ``with`` block.

    Args:
        folder: the run folder (created if missing).

    Yields:
        The lock file's path.

    Raises:
        RunLockedError: a live process (this host) or a process of another host holds
            the lock; the message names the folder, the holder's pid and host and when it
            started. Raised at once, without waiting.
        DiskFullError: the lock file could not be written (nothing is left behind).

    A stale lock (its pid is not alive on this host, or the file is unreadable) is taken
    over with a ``UserWarning``. On exit the file is removed if it is still ours.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    record = _own_record()
    _HELD.add(record["token"])  # before the file exists: our own threads see it as held
    try:
        _acquire(lock, folder, (json.dumps(record) + "\n").encode())
    except BaseException:
        _HELD.discard(record["token"])
        raise
    try:
        yield lock
    finally:
        _HELD.discard(record["token"])
        _release(lock, record["token"])


def _acquire(lock: Path, folder: Path, data: bytes) -> None:
    """Create ``lock`` holding ``data``, moving stale locks aside; raise if one is live."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _take_over_if_stale(lock, folder)
            continue
        try:
            os.write(fd, data)
            os.fsync(fd)
        except BaseException as err:
            os.close(fd)
            with contextlib.suppress(OSError):
                lock.unlink()
            code = disk_full_errno(err) if isinstance(err, OSError) else None
            if code is None:
                raise
            raise disk_full_error(lock, code, needed=len(data)) from err
        os.close(fd)
        return
    raise RunLockedError(
        f"run folder {folder} is locked: {lock} was created again each time a stale lock "
        f"was removed ({_ATTEMPTS} attempts); another run is starting there"
    )


def _own_record() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "create_time": _create_time(pid),
        "token": uuid.uuid4().hex,
    }


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _holder_alive(record: dict[str, Any]) -> bool:
    """Whether the lock's process may still be running (another host: assume it is)."""
    if record.get("host") != socket.gethostname():
        return True
    pid = record["pid"]
    if pid == os.getpid():
        return record.get("token") in _HELD
    if not psutil.pid_exists(pid):
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return False
        now = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError):
        return True  # exists but cannot be inspected (another user's process): respect it
    recorded = record.get("create_time")
    # the pid now belongs to a process started at another time (containers reuse small pids)
    return not (isinstance(recorded, (int, float)) and abs(now - recorded) > 1.0)


def _describe(record: dict[str, Any]) -> str:
    return (
        f"pid {record['pid']} on host {record.get('host')!r} "
        f"(started {record.get('started', 'at an unknown time')})"
    )


def _take_over_if_stale(lock: Path, folder: Path) -> None:
    """Raise if ``lock`` belongs to a live process; otherwise move it aside and warn."""
    try:
        seen = lock.read_bytes()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return  # released meanwhile: try again
    record = read_lock(lock) if seen else None
    if record is not None and _holder_alive(record):
        other = "" if record.get("host") == socket.gethostname() else (
            "; it is another host's process and cannot be checked from here"
        )
        raise RunLockedError(
            f"run folder {folder} is in use by {_describe(record)}{other}: two runs must not "
            f"write the same folder; wait for it, use another out_dir, or delete {lock} "
            "if that run is gone"
        )
    if record is None and age < _FRESH_S:
        raise RunLockedError(
            f"run folder {folder} is being locked by another process right now ({lock} is "
            f"{'empty' if not seen else 'incomplete'} and {age:.1f} s old); delete it if "
            "no run is starting there"
        )
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # another process removed it first
    moved = aside.read_bytes()
    if moved != seen:  # a live lock made since we looked: put it back
        with contextlib.suppress(OSError):
            os.link(aside, lock)
        with contextlib.suppress(OSError):
            aside.unlink()
        raise RunLockedError(f"run folder {folder} was just locked by another process ({lock})")
    aside.unlink()
    why = f"its process {_describe(record)} is not running" if record else "it is unreadable"
    warnings.warn(f"took over the stale lock {lock} of run folder {folder}: {why}", stacklevel=5)


def _release(lock: Path, token: str) -> None:
    record = read_lock(lock)
    if record is None or record.get("token") != token:
        holder = _describe(record) if record else "nobody (missing or unreadable)"
        warnings.warn(f"{lock} is no longer ours (now held by {holder}); left as it is", stacklevel=4)
        return
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()
