"""Throughput of 2 data-parallel CPU processes against 1, on the same single CPU core.

Both runs start the training loop of ``gi_utils.training`` (accelerate's data-parallel
wrappers, the real data loader over tiny synthetic data, UNet/ResNet-18 at 64 px, batch
8 per process) through ``torch.distributed.run``, every worker with 1 thread and pinned
to the same core: 1 process, then 2 processes (gloo). After warm-up steps, rank 0 times
a fixed number of optimizer steps; samples/s = steps x batch x processes / seconds.
Rounds alternate 1/2 processes and the fastest round of each counts (damps noise from
other jobs on the machine).

What it says: with the same CPU, 2 processes cannot be faster, so the ratio (ideal 1.0)
is what data parallelism costs: the gradient all-reduce of the whole model every step
and the switching between processes. (Giving the 1-process run 2 threads instead is no
fair baseline on a shared 2-core machine: OpenMP threads then wait on each other.) On
GPUs each process has a device of its own and the ratio is close to the number of GPUs
(expect about 1.7-1.9 x on Kaggle's 2 x T4 at 256-384 px; not measured here).

Usage: ``python benchmarks/bench_multiprocess.py [--smoke] [--steps 10] [--batch 8] [--rounds 2]``
(``--help`` lists the rest). ``--smoke``: 2 timed steps of batch 4 after 1, one round,
less data (a check that it runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import _common  # noqa: E402,F401 - sets the offline environment variables first
from _common import parse_args, peak_rss_mb, result  # noqa: E402

SIZE = 64
#: The sizes of a run: each worker's steps (warm-up, then timed) and batch, and the data.
SIZES = ("warmup", "steps", "batch")


def worker(data_dir: str, out_dir: str, warmup: int, steps: int, batch: int) -> None:
    """One process of a run (under torch.distributed.run): time ``steps`` steps after ``warmup``."""
    if hasattr(os, "sched_setaffinity"):  # Linux: every worker on the same core
        os.sched_setaffinity(0, {int(os.environ["BENCH_CORE"])})
    import torch

    torch.set_num_threads(1)
    from gi_utils.losses import build_loss
    from gi_utils.models import build_model
    from gi_utils.training import TrainConfig, load_train_data, make_accelerator, train_one_epoch

    cfg = TrainConfig(data_dir=data_dir, out_dir=out_dir, img_size=SIZE, batch_size=batch,
                      n_folds=2, device="cpu", progress=False, cache="memory",
                      max_steps_per_epoch=warmup + steps)  # fmt: skip
    acc = make_accelerator(cfg)
    data = load_train_data(cfg, acc.num_processes)
    net = build_model(cfg.arch, cfg.encoder, len(cfg.slice_offsets), 3)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    model, opt, loader = acc.prepare(net, opt, data.train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt.optimizer, lambda step: 1.0)
    marks: dict[str, float] = {}

    def on_step(tally, n_batches: int) -> None:
        if n_batches == warmup:
            acc.wait_for_everyone()
            marks["t0"] = time.perf_counter()

    loader.set_epoch(0)
    _, n_batches = train_one_epoch(acc, model, loader, opt, sched, build_loss(cfg.loss, **cfg.loss_kwargs),
                                   progress=False, on_step=on_step)  # fmt: skip
    acc.wait_for_everyone()
    seconds = time.perf_counter() - marks["t0"]
    if n_batches != warmup + steps:
        raise RuntimeError(f"{n_batches} batches per process, expected {warmup + steps}: more data")
    record = {"rank": acc.process_index, "processes": acc.num_processes, "seconds": seconds,
              "samples": steps * batch * acc.num_processes, "peak_rss_mb": peak_rss_mb(),
              "params": sum(p.numel() for p in net.parameters())}  # fmt: skip
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(out_dir, f"rank{acc.process_index}.json").write_text(json.dumps(record))


def run(processes: int, data_dir: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    """Start one run; return rank 0's record plus the largest worker RSS."""
    core = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_CORE": str(core), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(processes), __file__, "--worker", str(data_dir), str(out_dir),
           *(f"--{name}={getattr(args, name)}" for name in SIZES)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{processes}-process run failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    records = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(processes)]
    return {**records[0], "worker_rss_mb": max(r["peak_rss_mb"] for r in records)}


def main(args: argparse.Namespace) -> None:
    from gi_utils.synthetic import generate_dataset

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_mp_") as tmp:
        data_dir = generate_dataset(Path(tmp) / "data", n_cases=args.cases, n_test_cases=1, seed=2,
                                    slices_per_scan=args.slices)  # fmt: skip
        best: dict[int, dict] = {}
        for k in range(args.rounds):
            for processes in (1, 2):
                rec = run(processes, data_dir, Path(tmp) / f"run{processes}_{k}", args)
                rate = rec["samples"] / rec["seconds"]
                print(f"  round {k + 1}, {processes} process(es): {rec['samples']} samples in "
                      f"{rec['seconds']:.2f} s = {rate:.1f} samples/s", flush=True)  # fmt: skip
                if processes not in best or rate > best[processes]["rate"]:
                    best[processes] = {**rec, "rate": rate}
    one, two = best[1], best[2]
    ratio = two["rate"] / one["rate"]
    print(f"1 process, 1 thread, 1 core: {one['rate']:.1f} samples/s "
          f"({args.steps} steps x batch {args.batch})")  # fmt: skip
    print(f"2 processes, 1 thread each, the same core: {two['rate']:.1f} samples/s "
          f"({args.steps} steps x batch {args.batch} x 2; all-reduce of {two['params'] / 1e6:.1f} M "
          "gradients per step over gloo)")  # fmt: skip
    print(f"model unet/resnet18, {SIZE}x{SIZE}, tiny synthetic data, fastest of {args.rounds} rounds, "
          f"CPU, {time.perf_counter() - t_start:.0f} s in all")  # fmt: skip
    print("note: one core for both runs, so the ratio is data-parallel overhead (ideal 1.0), "
          "not speed-up; on GPUs (one device per process) expect about 1.7-1.9 x with 2 GPUs")  # fmt: skip
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: this process {peak_rss_mb():.0f} MiB; largest child {children:.0f} MiB; "
          f"per worker: 1 process {one['worker_rss_mb']:.0f} MiB, 2 processes "
          f"{two['worker_rss_mb']:.0f} MiB each")  # fmt: skip
    result("multiprocess_throughput_ratio", round(ratio, 2), "x",
           "report; 2 CPU cores measure overhead")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--worker", nargs=2, metavar=("DATA_DIR", "OUT_DIR"), help=argparse.SUPPRESS
    )
    for name, default, text in (("warmup", 2, "untimed steps first"), ("steps", 10, "timed steps"),
                                ("batch", 8, "samples per step and process"), ("rounds", 2, "rounds of 1 then 2 processes"),
                                ("cases", 8, "synthetic cases"), ("slices", 32, "slices per scan")):  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default, help=f"{text} (default {default})")
    args = parse_args(parser, None, {"warmup": 1, "steps": 2, "batch": 4, "rounds": 1, "cases": 4, "slices": 16})
    if args.worker:
        worker(*args.worker, *(getattr(args, name) for name in SIZES))
    else:
        main(args)
