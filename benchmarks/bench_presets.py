"""Training time of the default presets (``smoke``, ``demo``) here against a reference commit.

A feature that is off by default (the winners' levers of docs/levers.md, the feed plan, the
time limit) must not slow the presets a user runs first. This benchmark trains each preset on
fold 0 of the demo's synthetic data with this checkout's ``gi_utils`` and with the
reference commit's (extracted with ``git archive`` into a temporary folder), in separate
processes, alternating reference and here in every round, and compares the summed epoch
times the runs record in their history (training and validation; the cache, the model's
construction and the imports are left out). The fastest round of each side counts. Each side
has its own cache folder, so a cache format that changed does not favour one side.

Default reference: ``b1a9893``, the head before the levers, the feed plan and the time limit
were merged (issue 30's target: no default preset more than 5 % slower). ``--smoke`` compares
HEAD with itself at two steps: it checks that the benchmark runs (a shallow clone may lack
the reference); its figures mean nothing.
Run: ``.venv/bin/python benchmarks/bench_presets.py [--ref b1a9893] [--presets smoke demo] [--rounds 2] [--smoke]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402

import _common  # noqa: E402,F401 - sets the offline environment variables first
from _common import parse_args, result  # noqa: E402

from gi_utils.paths import REPO_ROOT  # noqa: E402
from gi_utils.pipeline import ensure_data  # noqa: E402
from gi_utils.synthetic import generate_dataset  # noqa: E402

#: The head before this round's levers, feed plan and time limit (see the module docstring).
REFERENCE = "b1a9893"

#: One training run in a child process whose ``gi_utils`` is the tree it runs in; prints the
#: summed epoch times and the steps trained, read from the run's history.csv.
CHILD = """
import csv, json, sys
import gi_utils
from gi_utils.training import train
from gi_utils.training.presets import preset_config
tree, preset, data, out, cache, steps, epochs, extra = sys.argv[1:9]
assert gi_utils.__file__.startswith(tree), f"gi_utils imported from {gi_utils.__file__}, not {tree}"
values = dict(data_dir=data, out_dir=out, cache_dir=cache, fold=0, progress=False, **json.loads(extra))
if int(steps):
    values["max_steps_per_epoch"] = int(steps)
if int(epochs):
    values["epochs"] = int(epochs)
cfg = preset_config(preset, **values)
train(cfg)
with open(f"{out}/history.csv") as f:
    rows = list(csv.DictReader(f))
print("RESULT", json.dumps({"seconds": sum(float(r["epoch_time_s"]) for r in rows), "steps": int(rows[-1]["step"])}))
"""


def extract(ref: str, into: Path) -> Path:
    """The tree of ``ref`` under ``into`` (``git archive``); a clear error when the clone lacks it."""
    try:
        tar = subprocess.run(["git", "archive", "--format=tar", ref], cwd=REPO_ROOT, capture_output=True, check=True)
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"reference {ref!r} not found in {REPO_ROOT} (a shallow clone?): "
                         f"{err.stderr.decode().strip()}; pass --ref with a commit it has") from None  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into


def train_once(tree: Path, preset: str, data: Path, work: Path, cache: Path, steps: int, epochs: int,
               extra: dict) -> dict:
    """One run of ``preset`` with ``tree``'s gi_utils in a fresh run folder under ``work``."""
    out = Path(tempfile.mkdtemp(prefix=f"{preset}_", dir=work))
    env = {**os.environ, "PYTHONPATH": str(tree), "GI_HEADLESS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tree), preset, str(data), str(out), str(cache),
                           str(steps), str(epochs), json.dumps(extra)], cwd=tree, env=env, capture_output=True, text=True)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{preset} with {tree} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", default=REFERENCE, help="the reference commit (default: %(default)s)")
    p.add_argument("--presets", nargs="+", default=["smoke", "demo"])
    p.add_argument("--rounds", type=int, default=2, help="rounds of each side (the fastest counts)")
    p.add_argument("--steps", type=int, default=0, help="steps per epoch (0: the preset's)")
    p.add_argument("--epochs", type=int, default=0, help="epochs (0: the preset's)")
    args = parse_args(p, argv, {"ref": "HEAD", "presets": ["smoke"], "rounds": 1, "steps": 2, "epochs": 1})
    with tempfile.TemporaryDirectory(prefix="gi_bench_presets_") as tmp:
        work = Path(tmp)
        if args.smoke:  # four small cases, two folds: the machinery, in a minute
            data, extra = generate_dataset(work / "data", 4, 0, 0, slices_per_scan=16), {"n_folds": 2}
        else:  # the demo's data, as the presets meet them
            data, extra = ensure_data(""), {}
        run(args, work, data, extra)


def run(args: argparse.Namespace, work: Path, data: Path, extra: dict) -> None:
    """Every preset of ``args``: the reference and here, round after round."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    trees = {"reference": extract(args.ref, work / "reference"), "here": REPO_ROOT}
    caches = {side: work / f"cache_{side}" for side in trees}
    for preset in args.presets:
        times: dict[str, list[float]] = {side: [] for side in trees}
        steps = 0
        # a first run per side fills its cache; the rounds after it are timed
        for side, tree in trees.items():
            train_once(tree, preset, data, work, caches[side], args.steps, args.epochs, extra)
        for _ in range(args.rounds):
            for side, tree in trees.items():
                got = train_once(tree, preset, data, work, caches[side], args.steps, args.epochs, extra)
                times[side].append(got["seconds"])
                steps = got["steps"]
        ref, here = min(times["reference"]), min(times["here"])
        for side in trees:
            print(f"{preset}: {side}: {min(times[side]):.2f} s for {steps} steps "
                  f"(rounds: {', '.join(f'{t:.2f}' for t in times[side])})", flush=True)  # fmt: skip
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"{preset}: reference {args.ref}, here {head}; one run at a time on the CPU; "
              f"peak RSS of a run {peak:.0f} MiB", flush=True)  # fmt: skip
        result(f"{preset}_preset_slowdown", round(100.0 * (here / ref - 1.0), 1), "%", "<= 5 %")


if __name__ == "__main__":
    main()
