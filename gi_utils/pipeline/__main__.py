"""``python -m gi_utils.pipeline``: the notebook series and its helpers from a shell.

    python -m gi_utils.pipeline                 # make demo: 01 -> 02 (x3) -> 03 -> 04
    python -m gi_utils.pipeline --data-only     # only make sure data exist (synthetic if none)
    python -m gi_utils.pipeline docs            # make docs: the demo's results -> README, docs/, pictures/;
                                                # its notebooks and report -> docs/demo/
    python -m gi_utils.pipeline notebooks       # copy the setup cell into every notebook, execute them
    python -m gi_utils.pipeline cv --arch unet --folds all --preset demo -p epochs 6
                                                # every fold of one architecture (resumable)
    python -m gi_utils.pipeline ablation --levers all   # make ablation: each lever of docs/levers.md
                                                # against the demo baseline on fold 0 (synthetic data)
    python -m gi_utils.pipeline select --runs-dir runs/blend3d
                                                # 03's choice: every model and blend on OOF scores
    python -m gi_utils.pipeline holdout --data-dir DATA --holdout-cases 5 --out DATA_HOLDOUT
                                                # real data: test/ made of 5 training cases
    python -m gi_utils.pipeline kaggle --kaggle-user NAME     # make kaggle: dist/kaggle/{dataset,kernel}
                                                # (--out another folder; --runs-dir the runs with best_config.json)
"""

from __future__ import annotations

import argparse
import sys

from gi_utils.data.holdout import make_holdout, solution_path
from gi_utils.paths import default_runs_dir
from gi_utils.pipeline.ablation import run_ablation
from gi_utils.pipeline.cv import cross_validate, parse_overrides
from gi_utils.pipeline.data_root import ensure_data
from gi_utils.pipeline.docs import publish_docs
from gi_utils.pipeline.kaggle import KAGGLE_DIR, build_kaggle_bundle
from gi_utils.pipeline.notebook_files import execute_in_place, sync_setup_cells
from gi_utils.pipeline.series import DEMO_ARCHS, demo
from gi_utils.report.decisions import choice_markdown
from gi_utils.report.runs import find_runs
from gi_utils.report.selection import BEST_CONFIG_NAME, select, write_best_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gi_utils.pipeline",
                                     description="The notebook series as a pipeline.")  # fmt: skip
    parser.add_argument("command", nargs="?", default="demo", choices=["demo", "docs", "notebooks", "cv", "select", "holdout", "kaggle", "ablation"],
                        help="demo (default): run the series; docs: publish the last demo's results, notebooks and report; "
                        "notebooks: copy the setup cell into every notebook and execute them")  # fmt: skip
    parser.add_argument("--runs-dir", default=None, help="folder of run folders (default: runs/)")
    parser.add_argument("--archs", nargs="+", default=list(DEMO_ARCHS), help="architectures to train")
    parser.add_argument("--force", action="store_true", help="run finished notebooks again")
    parser.add_argument("--data-only", action="store_true", help="only make sure data exist (synthetic if none)")
    cv = parser.add_argument_group("cv: cross-validation of one architecture")
    cv.add_argument("--arch", default="unet", help="architecture (cv)")
    cv.add_argument("--folds", default="all", help="'all' or a comma-separated list (cv)")
    cv.add_argument("--preset", default="demo", help="auto | smoke | demo | gpu | kaggle | colab (cv)")
    cv.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a TrainConfig field, e.g. -p img_size 128 (cv; repeatable)")  # fmt: skip
    cv.add_argument("--final", action="store_true", help="then train on all cases for the mean best epoch (cv)")
    cv.add_argument("--levers", default="all", help="'all' or a comma-separated list of docs/levers.md's levers "
                    "(ablation; 3d_crops by name); --preset, -p, --runs-dir, --data-dir also apply")  # fmt: skip
    cv.add_argument("--num-processes", type=int, default=1, help="processes per run (cv)")
    hold = parser.add_argument_group("holdout: a scored hold-out made of training cases")
    hold.add_argument("--data-dir", default="", help="the data root (cv, holdout)")
    hold.add_argument("--holdout-cases", default="5", help="how many cases, or a comma-separated list (holdout)")
    hold.add_argument("--out", default="", help=f"the new data folder (holdout); the bundle's folder (kaggle, default {KAGGLE_DIR})")
    parser.add_argument("--kaggle-user", default="your-kaggle-name", help="owner of the Kaggle dataset (kaggle)")
    args = parser.parse_args(argv)
    if args.data_only:
        print(f"data: {ensure_data('')}")
        return 0
    if args.command == "docs":
        for path in publish_docs(default_runs_dir(args.runs_dir)):
            print("wrote", path)
        return 0
    if args.command == "cv":
        summary = cross_validate(args.arch, args.folds, args.preset, parse_overrides(args.p), runs_dir=args.runs_dir,
                                 data_dir=args.data_dir, num_processes=args.num_processes, final=args.final)  # fmt: skip
        print({k: v for k, v in summary.items() if k != "folds"})
        return 0
    if args.command == "ablation":  # each lever against the baseline, fold 0 (docs/levers.md)
        folds = [int(f) for f in args.folds.split(",")] if args.folds != "all" else [0]
        table = run_ablation(args.preset, args.levers, parse_overrides(args.p), fold=folds[0], runs_dir=args.runs_dir,
                             data_dir=args.data_dir, num_processes=args.num_processes)  # fmt: skip
        print(table.to_string(index=False))
        return 0
    if args.command == "select":  # what 03_compare chooses, from a shell
        runs_root = default_runs_dir(args.runs_dir)
        table, cands = select(find_runs(runs_root))
        write_best_config(runs_root / BEST_CONFIG_NAME, cands[0])
        print(choice_markdown(table, cands), end="")
        print(f"best: {cands[0].name} (weights {'/'.join(f'{w:g}' for w in cands[0].weights)}); "
              f"wrote {runs_root / BEST_CONFIG_NAME}")
        return 0
    if args.command == "holdout":
        if not (args.data_dir and args.out):
            parser.error("holdout needs --data-dir and --out")
        cases = [int(c) for c in args.holdout_cases.split(",")] if "," in args.holdout_cases else int(args.holdout_cases)
        out = make_holdout(args.data_dir, args.out, cases)
        print(f"wrote {out} (truth: {solution_path(out)})")
        return 0
    if args.command == "kaggle":
        out = build_kaggle_bundle(default_runs_dir(args.runs_dir), args.out or KAGGLE_DIR, user=args.kaggle_user)
        dataset = out["dataset"]
        if out["kernel"] is None:
            print(f"dataset: {dataset} ({len(out['wheels'])} wheels, no models: no {BEST_CONFIG_NAME} in "
                  f"{default_runs_dir(args.runs_dir)}). Attach it to the training notebooks; the models and the "
                  f"submission kernel are added by running this again after 03_compare chose them.")
            print(f"upload: kaggle datasets create -p {dataset}")
            return 0
        print(f"dataset: {dataset} ({len(out['wheels'])} wheels, {len(out['models'])} models)")
        print(f"kernel: {out['kernel']}; upload: kaggle datasets create -p {dataset} && "
              f"kaggle kernels push -p {out['kernel']}")
        return 0
    if args.command == "notebooks":
        for path in sync_setup_cells():
            print("updated", path)
        execute_in_place()
        return 0
    demo(args.runs_dir, tuple(args.archs), force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
