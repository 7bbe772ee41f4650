"""Compare runs: `python scripts/compare.py configs/*.yaml [train.py options]`, or `--model all`.

Each config (or, without configs, each network the options name) trains in turn; its TensorBoard
run lands in <default_root_dir>/compare/<config name>/, so `tensorboard --logdir
lightning_logs/compare` overlays their curves. One table ends it: the runs grouped by data set, the
best validation accuracy first in each. Options after the configs apply to every run (for example
--max_epochs 500). Exit status as train.py's.
"""

from __future__ import annotations

import sys
from itertools import takewhile
from pathlib import Path
from typing import Any, NamedTuple

from jsonargparse import Namespace

from mlnet_lightning.cli import RunsSoFar, build_parser, parse, prepare, run_training
from mlnet_lightning.runs import train_one, train_or_keep
from mlnet_lightning.tables import format_table

COLUMNS = ("run", "data", "model", "initial_loss", "final_loss", "train_acc", "val_acc", "epochs", "fit_seconds")


class Run(NamedTuple):
    """One run of the comparison: its name in the table and on disk, its data set, its network."""

    name: str
    data: str
    network: str
    network_class: type
    config: Namespace


def main(argv: list[str] | None = None) -> int:
    """compare.py: the exit status as train.py's (mlnet_lightning.cli.run_training)."""
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    return run_training("compare.py", lambda runs: compare(argv, runs))


def compare(argv: list[str], runs: RunsSoFar) -> str:
    """Train each config's runs in turn; returns their table."""
    configs = list(takewhile(lambda arg: not arg.startswith("-"), argv))
    options = argv[len(configs) :]
    prepare()
    parser = build_parser()
    # Every config is read before any trains, so that a mistake in the last stops the first.
    planned = []
    for path in configs or [None]:
        config, models = parse(parser, ["--config", path, *options] if path else options)
        config.default_root_dir = str(Path(config.default_root_dir) / "compare")
        data = config.data.class_path.rpartition(".")[2]
        for name, model_class in models:
            run_name = Path(path).stem if path and len(models) == 1 else name
            planned.append(Run(run_name, data, name, model_class, config))
    runs.table = lambda summaries: comparison_table(planned, summaries)
    train = train_or_keep if len(planned) > 1 else train_one
    for run in planned:
        runs.summaries.append(train(run.network, run.network_class, run.config, parser, run.name))
    return runs.table(runs.summaries)


def comparison_table(planned: list[Run], summaries: list[dict[str, Any]]) -> str:
    """The runs' summaries (the first runs planned, in order) by data set, the best val acc first in each."""
    rows = [{"run": run.name, "data": run.data, **summary} for run, summary in zip(planned, summaries)]
    rows.sort(key=lambda row: (row["data"], -(row["val_acc"] or 0.0)))
    return format_table(rows, columns=COLUMNS, tutorial_rows=False)
