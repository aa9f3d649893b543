"""Training on several GPUs or CPU processes: ``launch(config, num_processes) -> history``.

:func:`gi_utils.training.train` is already data-parallel through Hugging Face ``accelerate``;
this module only starts it in ``num_processes`` processes and reads the result back:

* ``num_processes="auto"`` (``02_train``'s default; :func:`resolve_num_processes`): every
  visible GPU when there are several and CUDA is untouched in this process (Kaggle's T4 x2:
  two processes), else 1;
* ``num_processes=1``: ``train(config)`` in this process (nothing to start);
* GPUs (``method="notebook"``, the default when GPUs are visible): accelerate's
  :func:`accelerate.notebook_launcher` forks one process per GPU (NCCL). It needs CUDA
  untouched in this process: call ``launch`` before any cell puts a tensor or a model
  on the GPU (importing ``gi_utils`` does not);
* CPU, or a kernel where CUDA is already initialised (``method="torchrun"``): a
  ``python -m torch.distributed.run --standalone`` subprocess running
  ``python -m gi_utils.training --config ...`` (gloo on CPU), its output streamed here.

Shell equivalents (same ``train()``, same files)::

    torchrun --standalone --nproc_per_node 2 -m gi_utils.training --epochs 20 ...
    accelerate launch --multi_gpu --num_processes 2 -m gi_utils.training --epochs 20 ...

``batch_size`` is per process (:mod:`gi_utils.training.scaling`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import torch
from accelerate import notebook_launcher
from accelerate.state import AcceleratorState

from gi_utils.models.run_folder import HISTORY_FILE
from gi_utils.training.config import TrainConfig
from gi_utils.training.loop import resolve_config, train
from gi_utils.training.scaling import effective_batch_size, effective_lr
from gi_utils.training.time_limit import SESSION_START_ENV, session_start

__all__ = [
    "LAUNCH_METHODS",
    "AUTO_PROCESSES",
    "gpu_count",
    "resolve_num_processes",
    "describe_processes",
    "torchrun_command",
    "launch",
    "read_history",
]

#: How :func:`launch` starts several processes ("auto": notebook on GPUs, torchrun on CPU).
LAUNCH_METHODS: tuple[str, ...] = ("auto", "notebook", "torchrun")
#: ``num_processes`` that stands for "every visible GPU" (:func:`resolve_num_processes`).
AUTO_PROCESSES = "auto"


def gpu_count() -> int:
    """Visible CUDA GPUs, counted through NVML so that CUDA stays uninitialised (fork-safe)."""
    return int(torch.cuda.device_count())


def resolve_num_processes(num_processes: int | str, cfg: TrainConfig) -> int:
    """The processes a run trains in: ``num_processes`` itself when an int (checked), and
    for ``"auto"`` (:data:`AUTO_PROCESSES`) the number of visible GPUs when there are more
    than one (one process each, data-parallel through accelerate's notebook launcher) and
    CUDA is untouched in this process (the launcher forks it); else 1 (one GPU, the CPU,
    ``device="cpu"``, or CUDA initialised already: a note says to restart the kernel).

    Raises:
        ValueError: neither an int >= 1 nor "auto".
    """
    if num_processes == AUTO_PROCESSES:
        gpus = 0 if cfg.device == "cpu" else gpu_count()
        if gpus > 1 and torch.cuda.is_initialized():
            print(f"num_processes='auto': {gpus} GPUs are visible but CUDA is already initialised in this "
                  "kernel, so it cannot be forked: training in one process (restart the kernel and run the "
                  "notebook from the top to use them all)", flush=True)  # fmt: skip
            return 1
        return gpus if gpus > 1 else 1
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be an int >= 1 or {AUTO_PROCESSES!r}, got {num_processes!r}")
    return num_processes


def describe_processes(cfg: TrainConfig, num_processes: int) -> str:
    """One line: the processes, the effective batch and the learning-rate rule, e.g.
    ``2 processes (one per GPU); effective batch 32 = batch_size 16 x 2 processes x
    grad_accum 1; peak lr 0.002 (scale_lr='none': not scaled with the batch)``."""
    where = "one per GPU" if cfg.device != "cpu" and gpu_count() >= num_processes > 1 else (
        "this process" if num_processes == 1 else "CPU")  # fmt: skip
    batch = effective_batch_size(cfg.batch_size, num_processes, cfg.grad_accum)
    lr = effective_lr(cfg.lr, num_processes, cfg.grad_accum, cfg.scale_lr)
    rule = ("not scaled with the batch; 'linear' or 'sqrt' scale it" if cfg.scale_lr == "none"
            else f"lr {cfg.lr:.3g} scaled by the {cfg.scale_lr} rule")  # fmt: skip
    return (f"{num_processes} process{'es' if num_processes > 1 else ''} ({where}); effective batch {batch} = "
            f"batch_size {cfg.batch_size} x {num_processes} process{'es' if num_processes > 1 else ''} x "
            f"grad_accum {cfg.grad_accum}; peak lr {lr:.3g} (scale_lr={cfg.scale_lr!r}: {rule})")


def torchrun_command(config_path: str | os.PathLike, num_processes: int) -> list[str]:
    """``python -m torch.distributed.run --standalone ... -m gi_utils.training --config FILE``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(num_processes), "-m", "gi_utils.training",
            "--config", os.fspath(config_path)]  # fmt: skip


def read_history(out_dir: str | os.PathLike) -> pd.DataFrame | None:
    """``out_dir/history.csv`` (floats read back exactly), or None if there is none."""
    path = Path(out_dir) / HISTORY_FILE
    return pd.read_csv(path) if path.is_file() else None


def launch(
    config: TrainConfig | dict[str, Any], num_processes: int | str = 1, method: str = "auto"
) -> pd.DataFrame | None:
    """Train ``config`` in ``num_processes`` data-parallel processes; return the history.

    Args:
        config: a :class:`gi_utils.training.TrainConfig` or a dict of its fields (its
            ``data_dir`` is resolved here, once, for all processes).
        num_processes: 1 trains in this process; on GPUs, at most the number of visible
            GPUs (one process each); on CPU (``device="cpu"`` or no GPU), any number;
            ``"auto"``: every visible GPU (:func:`resolve_num_processes`).
        method: ``"auto"`` (``"notebook"`` with GPUs, ``"torchrun"`` otherwise),
            ``"notebook"`` (:func:`accelerate.notebook_launcher`, forks this process) or
            ``"torchrun"`` (a subprocess; works whatever this process did before).

    Returns:
        The history, one row per epoch (as :func:`gi_utils.training.train` returns it;
        read back from ``out_dir/history.csv`` when several processes ran), or None if
        the processes finished without writing one.

    Raises:
        ValueError: a bad ``num_processes`` or ``method``, or more GPU processes than GPUs.
        RuntimeError: already inside a launched process, CUDA initialised before a
            ``"notebook"`` launch, or the training processes failed (their last output).
    """
    if method not in LAUNCH_METHODS:
        raise ValueError(
            f"method={method!r} is not valid; choose one of {', '.join(LAUNCH_METHODS)}"
        )
    cfg = resolve_config(config)
    if num_processes == AUTO_PROCESSES:
        num_processes = resolve_num_processes(num_processes, cfg)
        print(describe_processes(cfg, num_processes), flush=True)
    num_processes = resolve_num_processes(num_processes, cfg)
    if num_processes == 1:
        return train(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            f"launch(num_processes={num_processes}) called inside a launched process "
            f"(WORLD_SIZE={os.environ['WORLD_SIZE']}); call gi_utils.training.train(config) there"
        )
    gpus = 0 if cfg.device == "cpu" else gpu_count()
    if gpus and num_processes > gpus:
        raise ValueError(
            f"num_processes={num_processes} but {gpus} GPU(s) are visible (one process per "
            "GPU); lower num_processes, or set device='cpu' to train in CPU processes"
        )
    if method == "auto":
        method = "notebook" if gpus else "torchrun"
    print(f"launching {num_processes} processes ({method}, {'GPU' if gpus else 'CPU'}); "
          f"effective batch {effective_batch_size(cfg.batch_size, num_processes, cfg.grad_accum)}",
          flush=True)  # fmt: skip
    if method == "notebook":
        _notebook_launch(cfg, num_processes, train)
    else:
        _torchrun_launch(cfg, num_processes, threads=None if gpus else _threads(num_processes))
    return read_history(cfg.out_dir)


def _notebook_launch(cfg: TrainConfig, num_processes: int, train_fn) -> None:
    if torch.cuda.is_initialized():
        raise RuntimeError(
            "CUDA is already initialised in this process (a tensor or model went to the GPU, or "
            "train() ran here), so it cannot be forked: restart the kernel and call launch() "
            "before any GPU work, or pass method='torchrun'"
        )
    # accelerate refuses to fork while a state exists; a finished single-process train()
    # in this kernel leaves one behind, and nothing in this process uses it any more
    AcceleratorState._reset_state(reset_partial_state=True)
    # amp="auto" is resolved by train() in each child: asking the GPU whether it has bf16
    # here would initialise CUDA in the parent, which then cannot fork
    amp = "no" if cfg.amp == "auto" else cfg.amp
    notebook_launcher(train_fn, (cfg,), num_processes=num_processes, mixed_precision=amp,
                      use_port=str(_free_port()))  # fmt: skip


def _torchrun_launch(cfg: TrainConfig, num_processes: int, threads: int | None) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", SESSION_START_ENV: repr(session_start())}  # one clock for all
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="gi_launch_") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
        cmd = torchrun_command(config_path, num_processes)
        tail: collections.deque[str] = collections.deque(maxlen=40)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True)  # fmt: skip
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                print(line, end="", flush=True)
                tail.append(line)
            returncode = proc.wait()
        except BaseException:  # KeyboardInterrupt in a notebook: stop the workers too
            proc.terminate()  # torchrun passes SIGTERM on to its workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # workers run in sessions of their own
                _kill_tree(proc.pid)
            raise
    if returncode != 0:
        raise RuntimeError(
            f"{num_processes} training processes failed (exit status {returncode}) running "
            f"{' '.join(cmd)}; last output:\n{''.join(tail)}"
        )


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (psutil comes with accelerate)."""
    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _threads(num_processes: int) -> int:
    """CPU threads per process: the usable cores shared out (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // num_processes)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
