"""Compare runs: `python scripts/compare.py configs/*.yaml [train.py options]`, or `--model all`.

Each config (or, without configs, each network the options name) trains in turn; its TensorBoard
run lands in <default_root_dir>/compare/<config name>/, so `tensorboard --logdir
lightning_logs/compare` overlays their curves. One table, best validation accuracy first, ends it.
Options after the configs apply to every run (for example --max_epochs 500).
"""

from __future__ import annotations

import sys
from argparse import ArgumentError
from itertools import takewhile
from pathlib import Path
from typing import Any

from mlnet_lightning.cli import build_parser, one_line, parse, prepare
from mlnet_lightning.runs import UsageError, train_one
from mlnet_lightning.tables import format_table

COLUMNS = ("run", "model", "initial_loss", "final_loss", "train_acc", "val_acc", "fit_seconds")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    configs = list(takewhile(lambda arg: not arg.startswith("-"), argv))
    options = argv[len(configs) :]
    prepare()
    parser = build_parser()
    try:
        # Every config is read before any trains, so that a mistake in the last stops the first.
        runs = []
        for path in configs or [None]:
            config, models = parse(parser, ["--config", path, *options] if path else options)
            config.default_root_dir = str(Path(config.default_root_dir) / "compare")
            for name, model_class in models:
                run_name = Path(path).stem if path and len(models) == 1 else name
                runs.append((run_name, name, model_class, config))
        summaries: list[dict[str, Any]] = []
        for run_name, name, model_class, config in runs:
            summaries.append({"run": run_name, **train_one(name, model_class, config, parser, run_name)})
    except (ArgumentError, UsageError, ValueError) as error:
        print(f"compare.py: error: {one_line(error)}", file=sys.stderr)
        return 2
    summaries.sort(key=lambda summary: summary["val_acc"] or 0.0, reverse=True)
    print(format_table(summaries, logits=False, columns=COLUMNS, tutorial_rows=False))
    return 0
