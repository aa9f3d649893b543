"""A GPU check ready to run: 02_train at 320 px with amp="auto" and 2 loader workers for one
epoch on the synthetic data, the same run killed mid-epoch and resumed, the same epoch on
the device data path (``data_path="device"``: the cache on the GPU, augmentation there),
then 04_submission; one line per fact (device, amp mode, seconds per epoch and samples/s of
both data paths, peak GPU memory, resume identical or not). Under 8 minutes on one GPU; `--cpu` runs it small on a CPU (CI).

    python benchmarks/gpu_check.py                 # on a GPU machine
    python benchmarks/gpu_check.py --cpu --img-size 64 --steps 6 --cases 6 --slices 16
    python benchmarks/gpu_check.py --smoke         # CI: the sizes above on a GPU; skipped without one

Without a GPU ``--smoke`` only imports and prints why it skips: the CPU run at those sizes
executes two notebooks and takes minutes, and ``make test`` runs it already
(``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import papermill as pm  # noqa: E402
import torch  # noqa: E402
from _common import parse_args, peak_rss_mb  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from gi_utils.models import run_name  # noqa: E402
from gi_utils.paths import REPO_ROOT  # noqa: E402
from gi_utils.synthetic import generate_dataset  # noqa: E402


def _params(args, data: Path, runs: Path) -> dict:
    # one process (not 02's "auto", every GPU): the run is compared with the command line's runs
    return {"preset": "gpu", "weights": "", "encoder": "resnet34", "img_size": args.img_size, "epochs": 1,
            "max_steps_per_epoch": args.steps, "num_workers": 2, "data_path": "workers", "amp": "auto", "data_dir": str(data),
            "runs_dir": str(runs), "n_overlays": 1, "num_processes": 1}  # fmt: skip


def _cli(params: dict, out_dir: Path, device: str) -> list[str]:
    """The command line of 02's run (``params``, its notebook parameters) into ``out_dir``."""
    same = ("preset", "weights", "encoder", "img_size", "epochs", "max_steps_per_epoch", "num_workers", "data_path",
            "amp", "data_dir")  # fmt: skip
    given = [arg for k in same for arg in (f"--{k.replace('_', '-')}", str(params[k]))]
    return [sys.executable, "-m", "gi_utils.training", *given, "--out-dir", str(out_dir), "--save-every-steps", "2",
            "--device", device, "--no-progress"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (small sizes, for CI)")
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--steps", type=int, default=0, help="steps per epoch (0: the whole epoch)")
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--slices", type=int, default=80)
    p.add_argument("--out", default="", help="working folder (default: a temporary one)")
    smoke = {"img_size": 64, "steps": 6, "cases": 6, "slices": 16}
    args = parse_args(p, argv, smoke)
    if args.smoke and (args.cpu or not torch.cuda.is_available()):
        sizes = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in smoke.items())
        print(f"skipped: no GPU here; the CPU run at the smallest size (--cpu {sizes}) is "
              "tests/test_gpu_check.py, which `make test` runs")  # fmt: skip
        return 0
    device = "cpu" if args.cpu else "auto"
    os.environ["GI_HEADLESS"] = "1"  # the notebooks run headless: text progress
    work = Path(args.out or tempfile.mkdtemp(prefix="gi_gpu_check_"))
    t0 = time.perf_counter()
    data = work / "data"
    if not (data / "train.csv").is_file():
        generate_dataset(data, args.cases, 1, 0, slices_per_scan=args.slices)
    params = _params(args, data, work / "runs")
    extra = {"device": "cpu"} if args.cpu else {}
    nb = REPO_ROOT / "notebooks"
    pm.execute_notebook(str(nb / "02_train.ipynb"), str(work / "02_train.ipynb"), parameters={**params, **extra},
                        cwd=str(nb), kernel_name="python3", progress_bar=False)  # fmt: skip
    name = run_name({"arch": "unet", "encoder": params["encoder"], "img_size": args.img_size, "fold": 0})
    metrics = json.loads((work / "runs" / name / "metrics.json").read_text())
    # the same run, killed after its second checkpoint inside the epoch and resumed
    cut = work / "runs_cut" / name
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli(params, cut, device), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = False
    for line in proc.stdout:
        if line.startswith("saved checkpoint") and "batch 2)" in line:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
    proc.wait()
    resumed = subprocess.run(_cli(params, cut, device), env=env, capture_output=True, text=True)
    full_w = load_file(work / "runs" / name / "best.safetensors")
    cut_w = load_file(cut / "best.safetensors") if resumed.returncode == 0 else {}
    identical = bool(cut_w) and all((full_w[k] == cut_w[k]).all() for k in full_w) and full_w.keys() == cut_w.keys()
    # the same epoch on the device data path (its own augmentation draws: not compared for equality)
    on_device = subprocess.run(_cli({**params, "data_path": "device"}, work / "runs_device" / name, device), env=env,
                               capture_output=True, text=True)  # fmt: skip
    if on_device.returncode:  # reported, and the rest still measured and printed
        print(on_device.stdout[-2000:], on_device.stderr[-2000:], sep="\n")
    dev_metrics = (json.loads((work / "runs_device" / name / "metrics.json").read_text())
                   if on_device.returncode == 0 else None)  # fmt: skip
    pm.execute_notebook(str(nb / "04_submission.ipynb"), str(work / "04_submission.ipynb"),
                        parameters={"runs_dir": str(work / "runs"), "runs": name, "data_dir": str(data)},
                        cwd=str(nb), kernel_name="python3", progress_bar=False)  # fmt: skip
    sub_rows = sum(1 for _ in open(work / "runs" / "submission.csv")) - 1
    epoch_s = float(metrics["final"]["epoch_time_s"])
    samples = int(metrics["samples_per_epoch"])
    peak = metrics.get("peak_gpu_memory_mb")
    print(f"device: {metrics['device']}")
    print(f"amp mode: {metrics['mixed_precision']}")
    print(f"seconds per epoch: {epoch_s:.1f} ({samples} samples at {args.img_size} px, 2 workers, validation included)")
    print(f"samples/s: {samples / epoch_s:.1f}")
    if dev_metrics is None:
        print(f"device path: FAILED (exit {on_device.returncode}, output above)")
    else:
        dev_s = float(dev_metrics["final"]["epoch_time_s"])
        print(f"seconds per epoch, device path: {dev_s:.1f} (the same epoch, data and augmentation on the "
              f"{metrics['device']})")  # fmt: skip
        print(f"samples/s, device path: {int(dev_metrics['samples_per_epoch']) / dev_s:.1f}")
        print(f"device path / 2 workers: {epoch_s / dev_s:.2f}x")
    print(f"peak GPU memory: {'n/a (CPU)' if peak is None else f'{peak:.0f} MiB'}")
    print(f"resume identical: {'yes' if identical else 'no'} (killed mid-epoch: {'yes' if killed else 'no'}, "
          f"resume exit {resumed.returncode})")
    print(f"submission rows: {sub_rows}")
    print(f"total: {time.perf_counter() - t0:.0f} s, peak RSS of this script {peak_rss_mb():.0f} MiB")
    return 0 if identical and killed and resumed.returncode == 0 and dev_metrics is not None else 1


if __name__ == "__main__":
    sys.exit(main())
