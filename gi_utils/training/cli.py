"""``python -m gi_utils.training``: train one model on one fold from the command line.

Every :class:`~gi_utils.training.config.TrainConfig` field is a flag (``--img-size 128``,
``--no-augment``) with its help text; ``--preset`` starts from a named preset and
``--config FILE`` from a JSON of fields (flags win over both). The data folder is resolved
here, once, before training starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from gi_utils.paths import DataNotFoundError
from gi_utils.training.config import TrainConfig
from gi_utils.training.loop import resolve_config, train
from gi_utils.training.presets import AUTO_PRESET, PRESETS, with_preset

__all__ = ["config_parser", "parse_args"]


def config_parser() -> argparse.ArgumentParser:
    """argparse over the TrainConfig fields, plus ``--preset`` and ``--config``."""
    parser = argparse.ArgumentParser(
        prog="python -m gi_utils.training", description="Train one model on one fold."
    )
    parser.add_argument("--preset", choices=[AUTO_PRESET, *PRESETS], default=None,
                        help="start from a named preset (gi_utils.training.presets); auto: the one that "
                             "fits this machine")  # fmt: skip
    parser.add_argument("--config", help="JSON file of TrainConfig fields; flags override it")
    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": f"{f.metadata['help']} (default: {default!r})"}  # fmt: skip
        base = f.type.removesuffix(" | None")
        if base == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif base.startswith("tuple"):
            kw.update(nargs="+", type=int)
        elif base.startswith("dict"):
            kw["type"] = json.loads
        elif f.type.endswith("| None"):
            kind = {"int": int, "float": float}.get(base, str)
            kw["type"] = lambda s, kind=kind: None if s.lower() in ("", "none", "null") else kind(s)
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[base]
        parser.add_argument(f"--{f.name.replace('_', '-')}", **kw)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags (and ``--preset``, ``--config FILE``) -> a validated TrainConfig."""
    parser = config_parser()
    args = vars(parser.parse_args(argv))
    preset, config_file = args.pop("preset", None), args.pop("config", None)
    values: dict[str, Any] = {}
    if config_file:
        values.update(json.loads(Path(config_file).read_text(encoding="utf-8")))
    values.update(args)
    try:
        return TrainConfig.from_dict(with_preset(preset, values))
    except ValueError as err:
        parser.error(str(err))  # exits with status 2 and the usage line


def main(argv: list[str] | None = None) -> int:
    """Parse, resolve the data folder once, train, print the history (main process)."""
    cfg = parse_args(argv)
    try:
        cfg = resolve_config(cfg)
    except DataNotFoundError as err:
        print(f"python -m gi_utils.training: {err}", file=sys.stderr)
        return 2
    history = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(history.to_string(index=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
