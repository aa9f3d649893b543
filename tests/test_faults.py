"""Faults of the machine rather than of the input: a full disk, two runs on one folder,
too little shared memory for the DataLoader's workers, and datasets that travelled
through macOS or Windows.

A full disk is simulated: a file whose ``write`` takes a few bytes and then raises
``OSError(ENOSPC)``, or a monkeypatched ``shutil.disk_usage``. The second run is a real
subprocess that holds the lock until the test writes a line to its stdin.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_kaggle_tree
from gi_utils import atomic, checkpoint, runlock
from gi_utils.atomic import (
    DiskFullError,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_free_space,
    disk_full_errno,
    format_bytes,
    replace_dir,
)
from gi_utils.checkpoint import load_state, save_state
from gi_utils.data import (
    DataError,
    SharedMemoryError,
    VolumeCache,
    batch_nbytes,
    build_metadata,
    cache,
    check_shared_memory,
    is_foreign_file,
    list_slices,
    shared_memory_needed,
)
from gi_utils.paths import REPO_ROOT
from gi_utils.runlock import LOCK_NAME, RunLockedError, read_lock, run_lock

torch.set_num_threads(1)
Usage = namedtuple("Usage", "total used free")
HOST = socket.gethostname()


# --------------------------------------------------------------------------- a full disk
class FillingFile:
    """A file that takes ``room`` more bytes (or characters), then raises ENOSPC."""

    def __init__(self, f, room: int, code: int) -> None:
        self._f, self.room, self.code = f, room, code

    def write(self, data):
        if len(data) > self.room:
            self._f.write(data[: self.room])
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def fill_disk_after(monkeypatch, module, room: int, code: int = errno.ENOSPC, free: int = 1234) -> None:
    """Files ``module`` opens take ``room`` bytes, then the disk is full (``free`` bytes left)."""
    def filling_open(*args, **kwargs):
        return FillingFile(builtins.open(*args, **kwargs), room, code)

    monkeypatch.setattr(module, "open", filling_open, raising=False)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - free, free))


def only_file(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("code", "what"), [(errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk quota exceeded")])
def test_text_write_on_a_full_disk_keeps_the_old_file_and_names_it(tmp_path, monkeypatch, code, what):
    target = atomic_write_text(tmp_path / "submission.csv", "old\n")
    fill_disk_after(monkeypatch, atomic, room=10, code=code)
    with pytest.raises(DiskFullError) as err:
        atomic_write_text(target, "id,class,predicted\n" * 100)
    msg = str(err.value)
    assert err.value.errno == code and isinstance(err.value, OSError)
    assert f"{what} while writing {target}: 1.2 KiB free on the filesystem of {tmp_path}" in msg
    assert "more than 10 B needed (10 bytes were written)" in msg
    assert "submission.csv is unchanged; no temporary file left" in msg
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == code
    assert target.read_text() == "old\n"
    assert only_file(tmp_path) == ["submission.csv"]


def test_json_fsync_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    def full_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_fsync)
    with pytest.raises(DiskFullError, match=r"disk full while writing .*metrics.json: .* free.*"
                                              r"metrics.json was not created"):  # fmt: skip
        atomic_write_json(tmp_path / "metrics.json", {"dice": 0.9})
    assert only_file(tmp_path) == []


def test_checkpoint_on_a_full_disk_keeps_the_previous_last_pt(tmp_path, monkeypatch):
    path = save_state(tmp_path / "last.pt", {"epoch": 3, "t": torch.arange(10)})
    fill_disk_after(monkeypatch, checkpoint, room=200)  # torch.save writes through our file
    with pytest.raises(DiskFullError, match=rf"disk full while writing {re.escape(str(path))}: "
                                              r"1.2 KiB free .*last.pt is unchanged"):  # fmt: skip
        save_state(path, {"epoch": 4, "t": torch.arange(10_000)})
    state = load_state(path)
    assert state["epoch"] == 3 and torch.equal(state["t"], torch.arange(10))
    assert only_file(tmp_path) == ["last.pt"]


def test_rust_and_wrapped_errors_count_as_disk_full(tmp_path):
    safetensors_like = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert disk_full_errno(safetensors_like) == errno.ENOSPC
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ValueError("could not write the table") from inner
    except ValueError as wrapped:
        assert disk_full_errno(wrapped) == errno.ENOSPC
    assert disk_full_errno(OSError(errno.EACCES, "Permission denied")) is None
    with pytest.raises(DiskFullError, match=r"best.safetensors"), atomic_path(tmp_path / "best.safetensors") as tmp:
        tmp.write_bytes(b"half")
        raise safetensors_like
    assert only_file(tmp_path) == []


def test_other_errors_and_interrupts_pass_unchanged(tmp_path):
    for exc in (PermissionError(errno.EACCES, "denied"), KeyboardInterrupt()):
        with pytest.raises(type(exc)) as err, atomic_path(tmp_path / "x.json"):
            raise exc
        assert type(err.value) is type(exc)
    assert only_file(tmp_path) == []


def test_replace_dir_moves_a_folder_over_another_or_into_place(tmp_path):
    for dst_exists in (False, True):
        src, dst = tmp_path / f"new{dst_exists}", tmp_path / f"set{dst_exists}"
        src.mkdir()
        (src / "a.txt").write_text("new")
        if dst_exists:
            dst.mkdir()
            (dst / "b.txt").write_text("old")
            (tmp_path / f".{dst.name}.old").mkdir()  # a leftover of an earlier crash
        assert replace_dir(src, dst) == dst
        assert [p.name for p in dst.iterdir()] == ["a.txt"] and not src.exists()
        assert not (tmp_path / f".{dst.name}.old").exists()


def test_replace_dir_that_fails_leaves_the_old_set_in_place(tmp_path):
    dst = tmp_path / "set"
    dst.mkdir()
    (dst / "b.txt").write_text("old")
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / "missing", dst)
    assert (dst / "b.txt").read_text() == "old" and not (tmp_path / ".set.old").exists()


def test_check_free_space_names_folder_needed_and_free(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: Usage(10**6, 10**6 - 2048, 2048))
    check_free_space(tmp_path / "new" / "folder", 2048)  # fits exactly; the folder need not exist
    with pytest.raises(DiskFullError, match=rf"not enough disk space for the cache in {re.escape(str(tmp_path))}: "
                                              r"3.0 KiB \(3072 bytes\) needed, 2.0 KiB \(2048 bytes\) free"):  # fmt: skip
        check_free_space(tmp_path, 3072, "the cache")
    assert [format_bytes(n) for n in (5, 1536, 3 * 1024**3)] == ["5 B", "1.5 KiB", "3.0 GiB"]


def small_meta(tmp_path: Path):
    return build_metadata(write_kaggle_tree(tmp_path / "data", {"case1_day0": (3, 32, 24)}))


def test_cache_that_does_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    meta = small_meta(tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: Usage(10**6, 10**6 - 4000, 4000))
    needed = 3 * 32 * 32 * 3  # float16 images + packed uint8 masks
    with pytest.raises(DiskFullError, match=rf"not enough disk space for a cache of 3 slices at 32x32 in "
                                              rf".*cache: 9.0 KiB \({needed} bytes\) needed, 3.9 KiB \(4000 bytes\) free"):  # fmt: skip
        VolumeCache(meta, 32, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_cache_disk_filling_while_building_names_the_file_and_cleans_up(tmp_path, monkeypatch):
    meta = small_meta(tmp_path)
    (tmp_path / "cache").mkdir()
    fill_disk_after(monkeypatch, cache, room=100, free=10**6)  # room enough before it starts
    with pytest.raises(DiskFullError, match=r"disk full while writing .*cache/gi_cache_s32_resize_\w+/images.npy: "
                                              r"976.6 KiB free .*, 9.0 KiB needed.*partial cache folder was removed"):  # fmt: skip
        VolumeCache(meta, 32, tmp_path / "cache", progress=False)
    assert only_file(tmp_path / "cache") == []
    monkeypatch.undo()
    again = VolumeCache(meta, 32, tmp_path / "cache", progress=False)  # space freed: it builds
    assert not again.reused and again.images.shape == (3, 32, 32)


# --------------------------------------------------------------------------- two runs, one folder
HOLDER = """
import sys
from gi_utils.runlock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_second_run_on_a_locked_folder_stops_at_once(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO_ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n"  # blocks until the lock is held
        record = read_lock(folder / LOCK_NAME)
        assert record["pid"] == holder.pid and record["host"] == HOST and record["started"]
        with pytest.raises(RunLockedError, match=rf"run folder {re.escape(str(folder))} is in use by "
                                                   rf"pid {holder.pid} on host '{re.escape(HOST)}'"):  # fmt: skip
            with run_lock(folder):
                pytest.fail("the second run got the lock")
        assert read_lock(folder / LOCK_NAME) == record  # the holder's lock is untouched
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()
    assert not (folder / LOCK_NAME).exists()  # released by its holder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with run_lock(folder) as lock:
            assert read_lock(lock)["pid"] == os.getpid()
    assert not lock.exists()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder: Path, content: bytes | dict, age_s: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    lock.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    if age_s:
        os.utime(lock, (time.time() - age_s, time.time() - age_s))
    return lock


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    pid = dead_pid()
    lock = write_lock(tmp_path, {"pid": pid, "host": HOST, "started": "2026-01-01T00:00:00+00:00"})
    with pytest.warns(UserWarning, match=rf"took over the stale lock .*{LOCK_NAME} of run folder .*: "
                                           rf"its process pid {pid} on host .* is not running"):  # fmt: skip
        with run_lock(tmp_path):
            assert read_lock(lock)["pid"] == os.getpid()
    assert only_file(tmp_path) == []


def test_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    write_lock(tmp_path, {"pid": os.getppid(), "host": HOST, "started": "x", "create_time": 1.0})
    with pytest.warns(UserWarning, match="took over the stale lock"), run_lock(tmp_path):
        pass


def test_garbage_lock_is_taken_over_unless_it_may_be_being_written(tmp_path):
    lock = write_lock(tmp_path, b"")  # just created by a process about to write it
    with pytest.raises(RunLockedError, match=r"is being locked by another process right now .* is empty"):
        with run_lock(tmp_path):
            pass
    write_lock(tmp_path, b"\x00garbage{", age_s=3600)
    with pytest.warns(UserWarning, match=r"took over the stale lock .*: it is unreadable"), run_lock(tmp_path):
        assert read_lock(lock)["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_of_another_host_or_held_in_this_process_is_respected(tmp_path):
    write_lock(tmp_path / "a", {"pid": 1, "host": "gpu-node-7", "started": "2026-01-01T00:00:00+00:00"})
    with pytest.raises(RunLockedError, match=r"in use by pid 1 on host 'gpu-node-7' .*another host's process"):
        with run_lock(tmp_path / "a"):
            pass
    with run_lock(tmp_path / "b"):
        with pytest.raises(RunLockedError, match=rf"in use by pid {os.getpid()} on host"), run_lock(tmp_path / "b"):
            pass
        assert read_lock(tmp_path / "b" / LOCK_NAME)["pid"] == os.getpid()
    assert not (tmp_path / "b" / LOCK_NAME).exists()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    other = {"pid": 1, "host": "gpu-node-7", "started": "x", "token": "theirs"}
    with pytest.warns(UserWarning, match=r"\.lock is no longer ours \(now held by pid 1 on host 'gpu-node-7'"):
        with run_lock(tmp_path) as lock:
            write_lock(tmp_path, other)  # someone deleted ours and locked the folder
    assert read_lock(lock) == other


def test_lock_on_a_full_disk_is_a_disk_full_error_and_leaves_no_lock(tmp_path, monkeypatch):
    def full_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlock.os, "fsync", full_fsync)
    with pytest.raises(DiskFullError, match=rf"disk full while writing .*{LOCK_NAME}: "), run_lock(tmp_path):
        pytest.fail("locked on a full disk")
    assert only_file(tmp_path) == []


# --------------------------------------------------------------------------- shared memory
def shm_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(free, 0, free))


def test_shared_memory_too_small_names_sizes_and_fixes(tmp_path, monkeypatch):
    shm_free(monkeypatch, 64 * 2**20)  # Docker's default /dev/shm
    with pytest.raises(SharedMemoryError) as err:
        check_shared_memory(4, 16 * 2**20, path=tmp_path)
    msg = str(err.value)
    assert f"shared memory {tmp_path} has 64.0 MiB free" in msg
    assert "num_workers=4 with prefetch_factor=2 and batches of 16.0 MiB" in msg
    assert "need about 160.0 MiB: lower num_workers (at most 1 fit)" in msg
    assert "--shm-size=1g" in msg and 'set_sharing_strategy("file_system")' in msg


def test_shared_memory_that_fits_or_is_not_used_passes(tmp_path, monkeypatch):
    assert shared_memory_needed(2, 1000) == 5000  # 2 workers * 2 batches * 1000 B * 1.25
    assert shared_memory_needed(0, 1000) == 0
    shm_free(monkeypatch, 5000)
    check_shared_memory(2, 1000, path=tmp_path)  # exactly fits
    with pytest.raises(SharedMemoryError, match=r"at most 0 fit; 0 loads in the main process"):
        check_shared_memory(1, 10_000, path=tmp_path)
    with pytest.raises(SharedMemoryError, match=r"prefetch_factor=4"):
        check_shared_memory(2, 1000, path=tmp_path, prefetch_factor=4)
    check_shared_memory(0, 10**12, path=tmp_path)  # no workers: no shared memory
    check_shared_memory(8, 10**12, path=tmp_path / "no_dev_shm")  # macOS, Windows


def test_batch_nbytes_counts_arrays_in_nested_batches():
    batch = (np.zeros((2, 3, 8, 8), np.float32), {"mask": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)}, ["id1", "id2"])
    assert batch_nbytes(batch) == 2 * 3 * 64 * 4 + 2 * 3 * 64


# --------------------------------------------------------------------------- data that travelled
def test_foreign_names():
    foreign = ["._slice_0001_266_266_1.50_1.50.png", "__MACOSX", ".DS_Store", "Thumbs.db", "thumbs.db", "Desktop.ini"]
    assert all(map(is_foreign_file, foreign))
    assert not any(map(is_foreign_file, ["slice_0001_266_266_1.50_1.50.png", "case1", "scans", ".lock", "slice_1.png"]))


def travelled(root: Path) -> Path:
    """A macOS zip's leftovers at every level of ``root`` (10 items under train/)."""
    scans = root / "train" / "case1" / "case1_day0" / "scans"
    for png in sorted(scans.glob("slice_*.png")):
        (scans / f"._{png.name}").write_bytes(b"\x00\x05\x16\x07")
    (scans / "__MACOSX").mkdir()
    for folder in (root / "train", root / "train" / "case1", root / "train" / "case1" / "case1_day0"):
        (folder / ".DS_Store").write_bytes(b"Bud1")
    (root / "train" / "__MACOSX" / "case1" / "case1_day0" / "scans").mkdir(parents=True)
    (root / "train" / "__MACOSX" / "case1" / "case1_day0" / "scans" / "._slice_0001_32_24_1.50_1.50.png").write_bytes(b"")
    (root / "train" / "Thumbs.db").write_bytes(b"")
    (root / "train" / "case1" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "__MACOSX" / "train" / "case1").mkdir(parents=True)  # beside train/: never read
    (root / "._train.csv").write_bytes(b"\x00\x05\x16\x07")
    return root


def test_foreign_files_are_skipped_with_one_warning(tmp_path):
    clean = build_metadata(write_kaggle_tree(tmp_path / "clean", {"case1_day0": (3, 32, 24)}))
    root = travelled(write_kaggle_tree(tmp_path / "data", {"case1_day0": (3, 32, 24)}))
    with pytest.warns(UserWarning) as caught:
        meta = build_metadata(root)
    skipped = [str(w.message) for w in caught if "foreign" in str(w.message)]
    assert len(caught) == 1 and len(skipped) == 1
    assert skipped[0].startswith(f"skipped 10 foreign file(s) and folder(s) (AppleDouble ._*, __MACOSX/, "
                                 f".DS_Store, Thumbs.db, desktop.ini) under {root / 'train'}, first ")  # fmt: skip
    assert meta.drop(columns="path").equals(clean.drop(columns="path"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_metadata(tmp_path / "clean")  # a clean tree: no warning at all


def test_malformed_names_still_raise_among_foreign_files(tmp_path):
    root = travelled(write_kaggle_tree(tmp_path / "data", {"case1_day0": (3, 32, 24)}))
    (root / "train" / "case1" / "case1_day0" / "scans" / "slice_1.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 10 foreign"), pytest.raises(DataError, match=r"slice_1.png' does not follow"):
        list_slices(root)
    only_foreign = write_kaggle_tree(tmp_path / "only", {"case1_day0": (1, 32, 24)})
    scans = only_foreign / "train" / "case1" / "case1_day0" / "scans"
    png = next(scans.glob("slice_*.png"))
    png.rename(scans / f"._{png.name}")
    with pytest.warns(UserWarning, match="skipped 1 foreign"), pytest.raises(DataError, match=r"no slice images"):
        list_slices(only_foreign)
