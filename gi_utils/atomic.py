"""Atomic file writes, torch-free: a temporary file in the same folder, flushed to disk and
moved over the target with :func:`os.replace`, so a process killed at any moment leaves
either the old file or the new one, never half of one. Every writer of the package
(checkpoints, models, histories, metrics, folds, figures, submissions, the README's
results block) goes through here, and so does reading back the JSON records.

A full disk (``ENOSPC``) or an exceeded quota (``EDQUOT``) while writing becomes a
:class:`DiskFullError` that names the file, the free space on its filesystem and, where
known, the bytes needed; the previous file stays as it was and no temporary file is left.
The large writes of a run (cache, out-of-fold set, checkpoints) are checked before they
start (:func:`check_free_space`, :class:`NotEnoughSpaceError`): a memory-mapped file that
runs out of disk while its pages are written ends the process (SIGBUS), not with an error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "read_json",
    "remove_stale_temps",
    "replace_dir",
    "DiskFullError",
    "NotEnoughSpaceError",
    "SPACE_MARGIN",
    "DISK_FULL_ERRNOS",
    "disk_full_errno",
    "disk_full_error",
    "check_free_space",
    "free_bytes",
    "format_bytes",
]

#: ``ENOSPC`` (no space left on device) and, where the platform has it, ``EDQUOT`` (quota).
DISK_FULL_ERRNOS: frozenset[int] = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None
)


class DiskFullError(OSError):
    """A file could not be written: the disk is full or the quota is exhausted.

    An ``OSError`` with ``errno`` ``ENOSPC`` or ``EDQUOT`` (kept from the original error),
    whose message names the file, the free space and, where known, the bytes needed.

    Attributes:
        path: the file (or folder) being written.
        free: free bytes on its filesystem when the error was raised (``None``: unknown).
        needed: bytes the write needed, where known (else ``None``).
    """

    def __init__(
        self,
        code: int,
        message: str,
        path: Path | None = None,
        free: int | None = None,
        needed: int | None = None,
    ) -> None:
        super().__init__(code, message)
        self.path, self.free, self.needed = path, free, needed


class NotEnoughSpaceError(DiskFullError):
    """Raised *before* writing (:func:`check_free_space`): the files would not fit on the
    filesystem of their folder. Nothing was written; the message names what was to be
    written, the bytes needed and free, the folder and a setting that fits."""


#: Share of the bytes a large write needs (cache, out-of-fold set, checkpoint) that must
#: stay free beside it: the run's small files, logs and the next write need room too.
SPACE_MARGIN: float = 0.05


def format_bytes(n: int | float) -> str:
    """``1536`` -> ``"1.5 KiB"``: a byte count for messages (B, KiB, MiB, GiB, TiB)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes (``shutil.disk_usage``) on the filesystem of ``path`` or of its nearest
    existing parent; ``None`` when that cannot be asked."""
    p = Path(path).absolute()
    for candidate in (p, *p.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def disk_full_errno(err: BaseException) -> int | None:
    """The ``ENOSPC``/``EDQUOT`` errno behind ``err``, else ``None``.

    Follows ``__cause__``/``__context__`` (a writer may wrap the ``OSError``) and reads the
    ``(os error 28)`` that Rust-backed writers such as safetensors put in their message.
    """
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e.errno
        text = str(e)
        for code in DISK_FULL_ERRNOS:
            if f"(os error {code})" in text:
                return code
        e = e.__cause__ or e.__context__
    return None


def disk_full_error(
    path: str | os.PathLike,
    code: int = errno.ENOSPC,
    needed: int | None = None,
    note: str = "",
    written: int | None = None,
) -> DiskFullError:
    """A :class:`DiskFullError` for writing ``path``, with the free space measured now.

    Args:
        path: the file or folder being written.
        code: the errno to keep (``ENOSPC`` or ``EDQUOT``).
        needed: the bytes the write needs, where known.
        note: appended to the message (e.g. what was kept).
        written: bytes already written when the disk filled (a lower bound of the need).
    """
    path = Path(path)
    free = free_bytes(path)
    what = "disk full" if code == errno.ENOSPC else "disk quota exceeded"
    free_text = "unknown free space" if free is None else f"{format_bytes(free)} free"
    message = f"{what} while writing {path}: {free_text} on the filesystem of {path.parent}"
    if needed is not None:
        message += f", {format_bytes(needed)} needed"
    elif written:
        message += f", more than {format_bytes(written)} needed ({written} bytes were written)"
    message += "; free some space or write elsewhere"
    if note:
        message += f" ({note})"
    return DiskFullError(code, message, path=path, free=free, needed=needed)


def check_free_space(
    folder: str | os.PathLike,
    needed: int,
    what: str = "",
    *,
    fits: str | Callable[[int], str] = "",
    margin: float = 0.0,
) -> None:
    """Refuse, before writing, ``needed`` bytes into ``folder`` when they do not fit.

    Args:
        folder: where the data go (need not exist yet: its nearest parent is asked).
        needed: bytes about to be written.
        what: what is written, for the message (e.g. ``"the cache"``).
        fits: the setting that fits, for the message: a text, or a function of the free
            bytes that returns one (e.g. the largest image size that fits).
        margin: share of ``needed`` that must stay free beyond it (:data:`SPACE_MARGIN`
            for the large files of a run: the cache, the out-of-fold set, checkpoints).

    Raises:
        NotEnoughSpaceError: ``ENOSPC``, naming what, the folder, the needed and the free
            bytes, the margin and the setting that fits. Nothing is raised when the free
            space cannot be asked.
    """
    folder = Path(folder)
    free = free_bytes(folder)
    required = needed + math.ceil(margin * needed)
    if free is None or free >= required:
        return
    kept = f", and {margin:.0%} of it kept free ({format_bytes(required)} in all)" if margin else ""
    hint = fits(free) if callable(fits) else fits
    raise NotEnoughSpaceError(
        errno.ENOSPC,
        f"not enough disk space for {what or 'the files'} in {folder}: "
        f"{format_bytes(needed)} ({needed} bytes) needed, {format_bytes(free)} "
        f"({free} bytes) free{kept}; {'what fits: ' + hint + '; or ' if hint else ''}free some space or write "
        "elsewhere",
        path=folder, free=free, needed=needed,
    )  # fmt: skip


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it over ``path`` on success.

    The caller writes the temporary file (any way it likes); on normal exit the file is
    fsync'ed and renamed over ``path`` atomically. On an exception it is removed and
    ``path`` is left untouched.

    Raises:
        DiskFullError: the disk filled (``ENOSPC``) or the quota ran out (``EDQUOT``) while
            the caller wrote, at the fsync or at the rename; raised after the temporary
            file is removed, from the original error. Other errors pass unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        code = disk_full_errno(err)
        if code is None:
            raise
        raise disk_full_error(path, code) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    except BaseException as err:
        written = None
        with contextlib.suppress(OSError):
            written = tmp_path.stat().st_size
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        code = disk_full_errno(err) if isinstance(err, Exception) else None
        if code is None or isinstance(err, DiskFullError):
            raise
        kept = f"{path.name} is unchanged" if path.exists() else f"{path.name} was not created"
        raise disk_full_error(path, code, note=f"{kept}; no temporary file left",
                              written=written) from err  # fmt: skip


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp``) a writer killed mid-write left in ``folder``.

    Call it only where no other process is writing into ``folder`` at the same time.

    Returns:
        The paths removed.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Move the folder ``src`` over ``dst`` (the old ``dst`` is removed first; a crash in
    between leaves no set at ``dst``, never half of one; a failed move puts the old one back)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        if old.exists():
            shutil.rmtree(old)
        dst.rename(old)
        try:
            src.rename(dst)
        except BaseException:  # src missing or on another device: the old set goes back
            old.rename(dst)
            raise
        shutil.rmtree(old)
    else:
        src.rename(dst)
    return dst


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[str]], None]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        write(f)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return _atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    NumPy scalars, paths and tuples are written as plain numbers, strings and lists.
    """
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the path when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
