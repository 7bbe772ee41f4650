"""The command line: jsonargparse (with Lightning's parser) builds --help, --config and --print_config."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import signal
import sys
import tempfile
import warnings
from argparse import ArgumentError
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ActionConfigFile, Namespace
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback, instantiate_class
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from mlnet_lightning.callbacks import EpochProgressBar, RunInterrupted, RunSummary, StopOnInterrupt
from mlnet_lightning.checkpoints import (
    LOGGER_OPTIONS,
    BestCheckpoint,
    CannotWrite,
    Resume,
    RunCheckpoint,
    RunLogger,
    check_resumable,
    plan_resume,
)
from mlnet_lightning.data import ClassificationData
from mlnet_lightning.models import MLP, MODELS, TUTORIAL_MODELS, TutorialModule
from mlnet_lightning.models.base import TrainingDiverged
from mlnet_lightning.parallel import WorkerDied, auto_jobs, can_train_in_parallel, train_in_parallel
from mlnet_lightning.pictures import Pictures
from mlnet_lightning.reference import LOGITS_FIX, TUTORIAL
from mlnet_lightning.seeds import StackedCopies, check_memory, format_copies_table
from mlnet_lightning.signals import (
    Terminated,
    describe,
    exit_status,
    raise_terminated,
    restore_handlers,
    saved_handlers,
    stopped_before_training,
    take_signals,
)

TRAINER_OPTIONS = set(inspect.signature(L.Trainer).parameters)
MODEL_HELP = (
    f"network to train: {', '.join(MODELS)}, all (the tutorial's five in turn, as it does), "
    "or a LightningModule of your own: my_file.MyNet (importable from here) or path/to/my_file.py:MyNet"
)
# Examples for an unknown class name given to a class option.
CLASS_EXAMPLES = {
    "data": "BlobData, MoonsData, CirclesData",
    "optimizer": "SGD, Adam, AdamW, RMSprop",
    "lr_scheduler": "StepLR, ExponentialLR, CosineAnnealingLR",
}
# Lines of jsonargparse's messages about the other types an option accepts, not about the mistake.
JSONARGPARSE_NOISE = (
    "Expected a path but",
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Expected a <class 'NoneType'>",
    "Given value",
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
    parser.add_argument(
        "--lr",
        type=PositiveFloat,
        default=0.2,
        help="learning rate of the default SGD and of hand-written updates (--optimizer takes --optimizer.lr)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed before the parameters are made")
    parser.add_argument(
        "--ckpt_path",
        type=str | None,
        default=None,
        help="continue a run from a checkpoint: its path, or last for the newest run of each network "
        "(last.ckpt is written every --checkpoint_every epochs)",
    )
    parser.add_argument(
        "--checkpoint_every",
        type=PositiveInt,
        default=1000,
        help="epochs between writes of the run's checkpoints/last.ckpt (the best by val/acc is kept at validations)",
    )
    parser.add_argument(
        "--fast_path",
        type=bool,
        default=True,
        help="train the full-batch epochs that nothing observes in bulk (false: Lightning's loop for every epoch; "
        "the numbers are the same)",
    )
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
        "--jobs",
        type=PositiveInt | None,
        default=None,
        help="networks trained at once, one single-threaded process each (default: all of them when training on "
        "a CPU with several cores, else 1)",
    )
    parser.add_argument(
        "--pictures",
        type=bool,
        default=True,
        help="draw the data, decision boundaries, confusion matrix and curves (TensorBoard and PNG files)",
    )
    parser.add_subclass_arguments(ClassificationData, "data", default={"class_path": "mlnet_lightning.data.BlobData"})
    # The network options of --model mlp; the rest of its constructor comes from the options above.
    tutorial_options = set(inspect.signature(TutorialModule).parameters)
    parser.add_class_arguments(MLP, "mlp", skip=tutorial_options, instantiate=False)
    parser.add_optimizer_args()
    parser.add_lr_scheduler_args((LRScheduler,))
    parser.add_class_arguments(L.Trainer, None)
    # A logger given by --logger writes under --default_root_dir, as Lightning's default one does (its
    # save_dir, a required argument of CSVLogger and TensorBoardLogger, need not be given).
    parser.link_arguments("default_root_dir", "logger.init_args.save_dir", apply_on="parse")
    parser.set_defaults(
        {
            "max_epochs": 10_000,
            "check_val_every_n_epoch": 100,
            "default_root_dir": "lightning_logs",
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
        }
    )
    return parser


def resolve_model(name: str) -> tuple[str, type[L.LightningModule]]:
    """A network's name, `module.Class` importable from the working directory, or `path/to/file.py:Class`."""
    if name in MODELS:
        return name, MODELS[name]
    in_file = ":" in name
    location, _, class_name = name.rpartition(":" if in_file else ".")
    if not location or (in_file and not location.endswith(".py")):
        raise UsageError(
            f"unknown model {name!r}: choose {', '.join(MODELS)}, all, module.Class or path/to/file.py:Class"
        )
    try:
        module = import_file(Path(location)) if in_file else importlib.import_module(location)
        model_class = getattr(module, class_name)
    except (ImportError, AttributeError, FileNotFoundError) as error:
        raise UsageError(f"cannot import model {name!r}: {error}") from None
    if not (inspect.isclass(model_class) and issubclass(model_class, L.LightningModule)):
        raise UsageError(f"model {name!r} is not a LightningModule")
    return class_name.lower(), model_class


def import_file(path: Path):
    """Import a Python file as the module named after it, as `import` would from its folder."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # as `import` does: pickle and typing look up a class's module there
    spec.loader.exec_module(module)
    return module


def build_data(config: Namespace) -> ClassificationData:
    """The data set chosen by --data."""
    return instantiate_class((), config.data.as_dict())


def build_model(model_class: type[L.LightningModule], config: Namespace, data: ClassificationData):
    """Pass the options the model's constructor takes: learning rate, seed, logits, data shape;
    the chosen optimizer and schedule, and the --mlp options to an MLP, must be taken."""
    offered = {
        "lr": float(config.lr),  # a plain float (not PositiveFloat): checkpoints then load with weights_only
        "seed": config.seed,
        "logits": config.logits,
        "num_features": data.num_features,
        "num_classes": data.num_classes,
    }
    chosen_classes = {key: config[key].as_dict() for key in ("optimizer", "lr_scheduler") if config[key]}
    chosen = json.loads(json.dumps(chosen_classes))  # plain YAML in hparams.yaml: Adam's betas as a list, not a tuple
    if issubclass(model_class, MLP):
        chosen.update(config.mlp.as_dict())
    if stacks_copies(config):
        return build_copies(model_class, config, {**offered, **chosen}, data)
    accepted = inspect.signature(model_class).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    refused = [key for key in chosen if not (takes_all or key in accepted)]
    if refused:
        raise UsageError(f"--{refused[0]}: {model_class.__name__}'s constructor takes no {refused[0]} argument")
    return model_class(**{k: v for k, v in offered.items() if takes_all or k in accepted}, **chosen)


def stacks_copies(config: Namespace) -> bool:
    return config.seeds > 1 or config.lrs is not None


def build_copies(
    model_class: type[L.LightningModule], config: Namespace, offered: dict[str, Any], data: ClassificationData
) -> StackedCopies:
    """--seeds and --lrs: every (rate, seed) copy of the network, stacked on one device, if they fit."""
    if not issubclass(model_class, TutorialModule):
        raise UsageError(f"--seeds and --lrs stack subclasses of TutorialModule; {model_class.__name__} is not one")
    lrs = [config.lr] if config.lrs is None else learning_rates(config.lrs)
    options = {k: v for k, v in offered.items() if k not in ("lr", "seed")}
    on_gpu = config.accelerator in ("gpu", "cuda") or (config.accelerator == "auto" and torch.cuda.is_available())
    points = max(data.batch_size, len(data.x_val))  # a training step's, or a validation's
    copy = model_class(**options, lr=lrs[0], seed=config.seed)
    check_memory(copy, config.seeds * len(lrs), points, torch.device("cuda" if on_gpu else "cpu"))
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
    run_name: str | None = None,
    data: ClassificationData | None = None,
    make_bar: Callable[..., Any] = tqdm,
) -> dict[str, Any]:
    """Fit one network, logging under `run_name` (default: the network's name), on the configured
    data unless given, its progress bar made by `make_bar`; returns its summary."""
    data = data or build_data(config)
    torch.manual_seed(config.seed)  # the same start for networks that take no seed of their own
    model = build_model(model_class, config, data)
    if not config.fast_path:
        model.fast_path = False
    trainer_options = {k: v for k, v in config.items(branches=True) if k in TRAINER_OPTIONS}
    runs_dir = Path(trainer_options["default_root_dir"]) / (run_name or name)
    resume = plan_resume(config.ckpt_path, runs_dir, model, data, config.max_epochs) if config.ckpt_path else None
    if config.ckpt_path and resume is None:
        print(f"train.py: note: no last.ckpt in the newest run under {runs_dir}; starting a new run", file=sys.stderr)
    stop = StopOnInterrupt()
    summary = RunSummary(name, stop)
    callbacks = [summary, stop, RunCheckpoint(), *instantiate_all(trainer_options.pop("callbacks"))]
    if trainer_options["enable_progress_bar"] is not False:
        callbacks.append(EpochProgressBar(make_bar))
    # last.ckpt every --checkpoint_every epochs, and the best by val/acc. A callback of its own writes
    # last.ckpt because Lightning's save_last rewrites it only where the monitored metric improved. It
    # saves once the epoch has ended (after its validation): a checkpoint saved at a validation's end
    # resumes inside that epoch, whose end then runs and logs a second time.
    latest = ModelCheckpoint(
        filename="last",
        every_n_epochs=config.checkpoint_every,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    if trainer_options["enable_checkpointing"] is not False:
        # The best first: last.ckpt, written after it at the same validation, then records its choice.
        callbacks += [BestCheckpoint(), latest]
    # fast_dev_run is a dry run: Lightning writes no logs or checkpoints, and the run writes nothing either.
    dry_run = bool(trainer_options["fast_dev_run"])
    if not dry_run:
        run_config = config.clone()
        run_config.model = name if config.model == "all" else config.model
        callbacks.append(SaveConfigCallback(parser, run_config, overwrite=True))
    # The run's length and data beside the network's options, so that HPARAMS compares runs by them too.
    run_options = {"max_epochs": config.max_epochs, "data": {"name": type(data).__name__, **data.hparams}}
    # Pictures show one network; stacked copies show their spread in summary.json and TensorBoard histograms.
    callbacks.append(Pictures(name, run_options, draw=config.pictures and not stacks_copies(config) and not dry_run))
    logger = trainer_options.pop("logger")
    if logger in (None, True):
        logger = run_logger(runs_dir, resume)
    elif logger is not False:
        logger = users_loggers(logger, runs_dir)
    try:
        trainer = L.Trainer(**trainer_options, logger=logger, callbacks=callbacks)
    except MisconfigurationException as error:
        raise UsageError(str(error).split("\n")[0]) from None
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > (os.cpu_count() or 1):
        raise UsageError(f"--devices {config.devices}: this machine has only {os.cpu_count()} CPU cores")
    if trainer.world_size > 1 and isinstance(model, StackedCopies):
        raise UsageError("--seeds and --lrs train their copies on one device: leave out --devices and --strategy")
    if trainer.world_size > 1 and not any(p.requires_grad for p in model.parameters()):
        raise UsageError(
            f"{name} keeps its weights in plain tensors, which DistributedDataParallel cannot see: "
            "train a network with nn.Parameters (parameter, linear, sequential) on several processes"
        )
    try:
        with stop.listening(trainer, latest):
            trainer.fit(model, datamodule=data, ckpt_path=resume.checkpoint if resume else None)
    except RunInterrupted:
        pass  # a second signal: the summary so far is below
    except SIGTERMException:  # Lightning's own stop, under several processes: every rank stops at one batch
        stop.signum = signal.SIGTERM
    except TrainingDiverged as error:
        kept = latest.best_model_path  # with no monitor, the "best" is the newest
        raise TrainingDiverged(f"{name}: {error}; last good checkpoint: {kept or 'none'}") from None
    except MisconfigurationException as error:  # an option Lightning refuses for this network
        raise UsageError(f"{name}: {str(error).splitlines()[0]}") from None
    except OSError as error:
        raise CannotWrite.during(name, error, trainer.log_dir, latest.best_model_path) from None
    if stop.requested:
        raise RunInterrupted(summary.summary, stop.checkpoint or latest.best_model_path, stop.signum)
    return summary.summary


def instantiate_all(classes: Namespace | list[Namespace] | None) -> list[Any]:
    """Objects of the classes an option names (`--callbacks`, `--logger`): one, several or none."""
    if classes is None:
        return []
    return [instantiate_class((), c.as_dict()) for c in (classes if isinstance(classes, list) else [classes])]


def users_loggers(loggers: Namespace | list[Namespace], runs_dir: Path) -> list[Logger]:
    """The loggers --logger names, writing where the default one does: under --default_root_dir, in the
    network's folder (`<default_root_dir>/<network>/version_N`) unless given a `name` of their own."""
    made = []
    for spec in loggers if isinstance(loggers, list) else [loggers]:
        spec = spec.clone()
        options = spec.get("init_args") or Namespace()
        if "save_dir" in options:
            options.save_dir = str(runs_dir.parent)
        module, _, class_name = spec.class_path.rpartition(".")
        name = inspect.signature(getattr(importlib.import_module(module), class_name)).parameters.get("name")
        if name is not None and options.get("name") == name.default:
            options.name = runs_dir.name
        made += instantiate_all(spec)
    return made


def run_logger(runs_dir: Path, resume: Resume | None) -> TensorBoardLogger:
    """A new version under `runs_dir` (claimed when the fit starts), or the resumed run's own folder."""
    if resume is not None and resume.run_dir is not None:
        return resume.logger()
    return RunLogger(runs_dir.parent, name=runs_dir.name, **LOGGER_OPTIONS)


def check_writable(folder: str) -> None:
    """Fail before training, not after it, when the logs cannot be written (creating nothing: a
    command that fails later on a bad option leaves no folder behind)."""
    existing = next(path for path in (Path(folder).absolute(), *Path(folder).absolute().parents) if path.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to the log folder {folder}: {error.strerror or error}") from None


SUMMARY_COLUMNS = ("model", "initial_loss", "final_loss", "train_acc", "val_acc", "fit_seconds", "device")


def format_table(
    summaries: list[dict[str, Any]],
    logits: bool,
    columns: tuple[str, ...] = SUMMARY_COLUMNS,
    tutorial_rows: bool = True,
) -> str:
    """Our numbers, with the tutorial's beneath each network it has numbers for (unless tutorial_rows is False)."""
    rows = [columns]
    for summary in summaries:
        rows.append(tuple(_cell(summary.get(c), c) for c in columns))
        reference = TUTORIAL.get(summary["model"])
        if tutorial_rows and reference is not None and summary["epochs"] == 10_000:
            reference = {**reference, **(LOGITS_FIX if logits else {}), columns[0]: "  tutorial"}
            rows.append(tuple(_cell(reference.get(c), c) for c in columns))
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _cell(value: Any, column: str) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if column == "fit_seconds" else f"{value:.6f}" if "loss" in column else f"{value:.4f}"
    return "" if value is None else str(value)


# The project's former names of Trainer options.
RENAMED = {"--epochs": "--max_epochs", "--data.val_every": "--check_val_every_n_epoch"}
# Options that take one class or a list of them: given again, they add one more (jsonargparse's own
# `--callbacks+ X`) rather than replace the one before.
LIST_OPTIONS = ("callbacks", "logger")


def appending_repeats(argv: list[str]) -> list[str]:
    """`--callbacks A ... --callbacks B` as `--callbacks A ... --callbacks+ B` (and the same for --logger)."""
    seen: set[str] = set()
    rewritten = []
    for arg in argv:
        option, equals, value = arg.partition("=")
        name = option.removeprefix("--").removesuffix("+")
        if option.startswith("--") and name in LIST_OPTIONS:
            if name in seen and not option.endswith("+"):
                arg = f"--{name}+{equals}{value}"
            seen.add(name)
        rewritten.append(arg)
    return rewritten


def parse(parser: LightningArgumentParser, argv: list[str] | None) -> tuple[Namespace, list[tuple[str, type]]]:
    """The options, and the networks they name; raises ArgumentError or UsageError."""
    argv = appending_repeats(sys.argv[1:] if argv is None else argv)
    if any(arg.startswith("--logger.") and "save_dir" in arg for arg in argv):
        raise UsageError("--logger.save_dir: loggers write under --default_root_dir: give that instead")
    for old, new in RENAMED.items():
        if any(arg.partition("=")[0] == old for arg in argv):
            raise UsageError(f"{old} is gone: Lightning's {new} says it (an epoch is one pass over the data)")
    config = parser.parse_args(argv)
    names = list(TUTORIAL_MODELS) if config.model == "all" else [config.model]
    models = [resolve_model(name) for name in names]
    if config.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError("--accelerator gpu: no CUDA GPU is available on this machine (try --accelerator cpu)")
    if config.mlp != parser.get_defaults().mlp and not any(issubclass(c, MLP) for _, c in models):
        raise UsageError("--mlp options apply to --model mlp only")
    if (config.jobs or 1) > 1 and not can_train_in_parallel(config):
        raise UsageError(
            f"--jobs {config.jobs}: networks train in parallel on the CPU only, one device each "
            "(leave out --jobs with --accelerator gpu, --devices or --strategy)"
        )
    if config.ckpt_path not in (None, "last") and len(models) > 1:
        raise UsageError("--ckpt_path PATH continues one network: add --model (or use --ckpt_path last)")
    if config.ckpt_path and len(models) > 1:  # every network's, before any trains (one's: in train_one)
        for name, _ in models:
            check_resumable(config.ckpt_path, Path(config.default_root_dir) / name, config.max_epochs)
    check_writable(config.default_root_dir)
    return config, models


def one_line(error: Exception) -> str:
    """An error as one line. jsonargparse's nested messages name the option (`--data.n_samples` for a
    class's argument), then the reasons that are not about the types it also accepts (None, a config
    file's path), and the value given."""
    text = str(error)
    if text.startswith("Unexpected config:"):  # it goes on with the whole file
        return "--config: the file is not a YAML mapping of options"
    keys = re.findall(r'Parser key "([\w.]+)":', text)
    if not keys:
        return " ".join(text.split())
    option = ".".join(keys)
    lines = re.sub(r'Parser key "[\w.]+":|Problem with given class_path .*?:\n', "\n", text).splitlines()
    reasons = [re.sub(r"^(-(\s+|$))+", "", line.strip()) for line in lines]
    values = [reason.removeprefix("Given value:").strip() for reason in reasons if reason.startswith("Given value:")]
    given = next((value for value in values if not value.startswith("NestedArg(")), "")  # the innermost
    noise = JSONARGPARSE_NOISE + (("Expected a dot import path string",) if "." in option else ())
    reasons = [reason for reason in reasons if reason and not reason.startswith(noise)]
    for reason in reasons:
        unknown = re.match(r"Expected a dot import path string: (\S+)", reason)
        if unknown and option in CLASS_EXAMPLES:
            examples = CLASS_EXAMPLES[option]
            return f"--{option}: unknown class {unknown.group(1)!r}: give a name such as {examples}, or an import path"
    message = " ".join(reasons)
    if given and not re.search(rf"(?<![\w.<>=-]){re.escape(given)}(?![\w.-])", message):  # not echoed already
        message += f" (given {given})"
    return f"--{option}: {message}"


def prepare() -> None:
    """Quiet Lightning, and let --model my_file.MyNet import from the working directory."""
    _quiet_lightning()
    sys.path.insert(0, str(Path.cwd()))


def print_error(program: str, error: BaseException | str) -> None:
    """The one-line error of the command-line tools: `program: error: what is wrong`."""
    message = one_line(error) if isinstance(error, BaseException) else " ".join(error.split())
    print(f"{program}: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """train.py: 0 when done, 2 for a usage error, 1 when training diverged or a --jobs worker failed,
    130 after Ctrl-C, 143 after SIGTERM."""
    previous_handlers = saved_handlers()
    take_signals({signal.SIGTERM: raise_terminated})  # before the fit, nothing needs saving
    summaries: list[dict[str, Any]] = []
    try:
        prepare()
        parser = build_parser()
        config, models = parse(parser, argv)
        jobs = min(config.jobs or auto_jobs(config, len(models)), len(models))
        if jobs > 1:
            train_in_parallel(train_one, models, config, parser, jobs, summaries)
        else:
            for name, model_class in models:
                summaries.append(train_one(name, model_class, config, parser))
    except (ArgumentError, UsageError, ValueError) as error:
        print_error("train.py", error)
        return 2
    except TrainingDiverged as error:
        print_error("train.py", f"training diverged: {error}")
        return 1
    except (WorkerDied, CannotWrite) as error:
        print_error("train.py", error)
        return 1
    except RunInterrupted as interrupted:
        runs = [*summaries, interrupted.summary] if interrupted.summary else summaries
        if runs:
            rank_zero_only(print)(format_table(runs, config.logits))  # once, not once per DDP process
        if interrupted.checkpoint:
            advice = f"resume with the same command and --ckpt_path last (checkpoint: {interrupted.checkpoint})"
        else:
            advice = "no checkpoint was written"
        rank_zero_only(print)(f"train.py: stopped by {describe(interrupted.signum)}; {advice}", file=sys.stderr)
        return exit_status(interrupted.signum)
    except KeyboardInterrupt:  # before or between fits, where nothing needs saving
        return stopped_before_training("train.py", signal.SIGINT)
    except Terminated as stop:
        return stopped_before_training("train.py", stop.signum)
    finally:
        restore_handlers(previous_handlers)
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
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # a resumed run's own checkpoints
