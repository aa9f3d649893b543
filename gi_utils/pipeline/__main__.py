"""``python -m gi_utils.pipeline``: the notebook series and its helpers from a shell.

    python -m gi_utils.pipeline                 # make demo: 01 -> 02 (x3) -> 03 -> 04
    python -m gi_utils.pipeline --data-only     # only make sure data exist (synthetic if none)
    python -m gi_utils.pipeline docs            # make docs: demo results -> README, pictures/
    python -m gi_utils.pipeline notebooks       # copy the setup cell into every notebook, execute them
"""

from __future__ import annotations

import argparse
import sys

from gi_utils.paths import default_runs_dir
from gi_utils.pipeline.data_root import ensure_data
from gi_utils.pipeline.docs import publish_docs
from gi_utils.pipeline.notebook_files import execute_in_place, sync_setup_cells
from gi_utils.pipeline.series import DEMO_ARCHS, demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gi_utils.pipeline",
                                     description="The notebook series as a pipeline.")  # fmt: skip
    parser.add_argument("command", nargs="?", default="demo", choices=["demo", "docs", "notebooks"],
                        help="demo (default): run the series; docs: publish the last demo's results; "
                        "notebooks: copy the setup cell into every notebook and execute them")  # fmt: skip
    parser.add_argument("--runs-dir", default=None, help="folder of run folders (default: runs/)")
    parser.add_argument("--archs", nargs="+", default=list(DEMO_ARCHS), help="architectures to train")
    parser.add_argument("--force", action="store_true", help="run finished notebooks again")
    parser.add_argument("--data-only", action="store_true", help="only make sure data exist (synthetic if none)")
    args = parser.parse_args(argv)
    if args.data_only:
        print(f"data: {ensure_data('')}")
        return 0
    if args.command == "docs":
        for path in publish_docs(default_runs_dir(args.runs_dir) / "pictures"):
            print("wrote", path)
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
