"""The command line: jsonargparse (with Lightning's parser) builds --help, --config and --print_config."""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ActionConfigFile, Namespace
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from mlnet_lightning.callbacks import EpochProgressBar, RunSummary
from mlnet_lightning.data import BlobData, ClassificationData
from mlnet_lightning.models import TUTORIAL_MODELS, TutorialModule
from mlnet_lightning.pictures import Pictures
from mlnet_lightning.reference import LOGITS_FIX, TUTORIAL
from mlnet_lightning.seeds import StackedCopies, format_copies_table

# Trainer options that count Lightning's epochs and steps; --epochs and --val_every replace them.
OWNED_TRAINER_OPTIONS = {"max_epochs", "min_epochs", "max_steps", "min_steps", "check_val_every_n_epoch", "logger"}
MODEL_HELP = (
    f"network to train: {', '.join(TUTORIAL_MODELS)}, all (each in turn, as the tutorial does), "
    "or a LightningModule's import path such as my_file.MyNet"
)


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit status 2."""


def build_parser() -> LightningArgumentParser:
    parser = LightningArgumentParser(
        prog="train.py",
        description="Train the feed-forward networks of the PyTorch nn tutorial with Lightning.",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    parser.add_argument("--model", type=str, default="all", help=MODEL_HELP)
    parser.add_argument("--epochs", type=PositiveInt, default=10_000, help="passes over the training data")
    parser.add_argument("--lr", type=PositiveFloat, default=0.2, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed before the parameters are made")
    parser.add_argument(
        "--logits", type=bool, default=False, help="fix the tutorial's double softmax: networks return logits"
    )
    parser.add_argument(
        "--seeds", type=PositiveInt, default=1, help="train copies with seeds --seed, --seed+1, ... at once (stacked)"
    )
    parser.add_argument(
        "--lrs", type=str | None, default=None, help="train a copy at each of these rates at once, e.g. 0.05,0.1,0.2"
    )
    parser.add_argument(
        "--pictures",
        type=bool,
        default=True,
        help="draw the data, decision boundaries, confusion matrix and curves (TensorBoard and PNG files)",
    )
    parser.add_class_arguments(ClassificationData, "data", skip={"epochs"})
    parser.add_class_arguments(L.Trainer, None, skip=OWNED_TRAINER_OPTIONS)
    parser.set_defaults(
        {"default_root_dir": "lightning_logs", "num_sanity_val_steps": 0, "enable_model_summary": False}
    )
    return parser


def resolve_model(name: str) -> tuple[str, type[L.LightningModule]]:
    """A tutorial network's name, or `module.Class` importable from the working directory."""
    if name in TUTORIAL_MODELS:
        return name, TUTORIAL_MODELS[name]
    module_name, _, class_name = name.rpartition(".")
    if not module_name:
        raise UsageError(f"unknown model {name!r}: choose {', '.join(TUTORIAL_MODELS)}, all, or module.Class")
    try:
        model_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"cannot import model {name!r}: {error}") from None
    if not (inspect.isclass(model_class) and issubclass(model_class, L.LightningModule)):
        raise UsageError(f"model {name!r} is not a LightningModule")
    return class_name.lower(), model_class


def build_model(model_class: type[L.LightningModule], config: Namespace, data: ClassificationData):
    """Pass the options the model's constructor takes: learning rate, seed, logits, data shape."""
    offered = {
        "lr": config.lr,
        "seed": config.seed,
        "logits": config.logits,
        "num_features": data.num_features,
        "num_classes": data.num_classes,
    }
    if stacks_copies(config):
        return build_copies(model_class, config, offered)
    accepted = inspect.signature(model_class).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    return model_class(**{k: v for k, v in offered.items() if takes_all or k in accepted})


def stacks_copies(config: Namespace) -> bool:
    return config.seeds > 1 or config.lrs is not None


def build_copies(model_class: type[L.LightningModule], config: Namespace, offered: dict[str, Any]) -> StackedCopies:
    """--seeds and --lrs: every (rate, seed) copy of the network, stacked on one device."""
    if not issubclass(model_class, TutorialModule):
        raise UsageError(f"--seeds and --lrs stack subclasses of TutorialModule; {model_class.__name__} is not one")
    lrs = [config.lr] if config.lrs is None else learning_rates(config.lrs)
    options = {k: v for k, v in offered.items() if k not in ("lr", "seed")}
    return StackedCopies(model_class, range(config.seed, config.seed + config.seeds), lrs, **options)


def learning_rates(text: str) -> list[float]:
    """--lrs 0.05,0.1,0.2 as a list of distinct positive rates."""
    try:
        rates = [float(rate) for rate in text.split(",")]
    except ValueError:
        rates = []
    if not rates or not all(rate > 0 for rate in rates) or len(set(rates)) < len(rates):
        raise UsageError(f"--lrs takes distinct positive learning rates separated by commas, got {text!r}")
    return rates


def train_one(
    name: str,
    model_class: type[L.LightningModule],
    config: Namespace,
    parser: LightningArgumentParser,
    data: ClassificationData | None = None,
) -> dict[str, Any]:
    """Fit one network (on the configured data unless given); returns its summary."""
    data = data or BlobData(epochs=config.epochs, **config.data)
    model = build_model(model_class, config, data)
    fast = getattr(model, "trains_epoch_chunks", False)
    trainer_options = {k: v for k, v in config.items() if k in inspect.signature(L.Trainer).parameters}
    summary = RunSummary(name)
    callbacks = [summary, *(trainer_options.pop("callbacks") or [])]
    if trainer_options["enable_progress_bar"] is not False:
        callbacks.append(EpochProgressBar())
    if trainer_options["enable_checkpointing"] is not False:
        callbacks.append(ModelCheckpoint(monitor="val/acc", mode="max", save_last=True, filename="{epoch}-best"))
    run_config = config.clone()
    run_config.model = name if name in TUTORIAL_MODELS else config.model
    callbacks.append(SaveConfigCallback(parser, run_config, overwrite=True))
    # Pictures show one network; stacked copies show their spread in summary.json and TensorBoard histograms.
    draw = config.pictures and not stacks_copies(config)
    callbacks.append(Pictures(name, {"epochs": config.epochs, "data": config.data.as_dict()}, draw=draw))
    logger = TensorBoardLogger(trainer_options["default_root_dir"], name=name, default_hp_metric=False)
    try:
        trainer = L.Trainer(
            **trainer_options,
            max_epochs=data.lightning_epochs if fast else data.epochs,
            logger=logger,
            callbacks=callbacks,
        )
    except MisconfigurationException as error:
        raise UsageError(str(error).split("\n")[0]) from None
    if trainer.world_size > 1 and isinstance(model, StackedCopies):
        raise UsageError("--seeds and --lrs train their copies on one device: leave out --devices and --strategy")
    if trainer.world_size > 1 and not any(p.requires_grad for p in model.parameters()):
        raise UsageError(
            f"{name} keeps its weights in plain tensors, which DistributedDataParallel cannot see: "
            "train a network with nn.Parameters (parameter, linear, sequential) on several processes"
        )
    trainer.fit(model, datamodule=data)
    return summary.summary


def format_table(summaries: list[dict[str, Any]], logits: bool) -> str:
    """Our numbers, with the tutorial's beneath each network it has numbers for."""
    columns = ("model", "initial_loss", "final_loss", "train_acc", "val_acc", "fit_seconds", "device")
    rows = [columns]
    for summary in summaries:
        rows.append(tuple(_cell(summary.get(c), c) for c in columns))
        reference = TUTORIAL.get(summary["model"])
        if reference is not None and summary["epochs"] == 10_000:
            reference = {**reference, **(LOGITS_FIX if logits else {})}
            rows.append(("  tutorial", *(_cell(reference.get(c), c) for c in columns[1:5]), "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _cell(value: Any, column: str) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if column == "fit_seconds" else f"{value:.6f}" if "loss" in column else f"{value:.4f}"
    return "" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    _quiet_lightning()
    sys.path.insert(0, str(Path.cwd()))  # so that --model my_file.MyNet imports from here
    parser = build_parser()
    try:
        config = parser.parse_args(argv)
        names = list(TUTORIAL_MODELS) if config.model == "all" else [config.model]
        models = [resolve_model(name) for name in names]
        if config.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise UsageError("--accelerator gpu: no CUDA GPU is available on this machine (try --accelerator cpu)")
        summaries = [train_one(name, model_class, config, parser) for name, model_class in models]
    except (ArgumentError, UsageError, ValueError) as error:
        print(f"train.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    table = format_copies_table(summaries) if stacks_copies(config) else format_table(summaries, config.logits)
    rank_zero_only(print)(table)  # once, not once per DDP process
    return 0


def _quiet_lightning() -> None:
    # The summary table is the output; Lightning's start-up notes and tips would bury it.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*will run with no optimizer.*")  # hand-written updates, on purpose
