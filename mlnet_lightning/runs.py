"""Building and running one fit: the network, its data, its Trainer, callbacks and loggers."""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.cli import LightningArgumentParser, instantiate_class
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.plugins import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from tqdm.auto import tqdm

from mlnet_lightning.callbacks import EpochProgressBar, RunInterrupted, RunSummary, StopOnInterrupt
from mlnet_lightning.checkpoints import (
    LOGGER_OPTIONS,
    AtomicCheckpointIO,
    BestCheckpoint,
    CannotWrite,
    LatestCheckpoint,
    Resume,
    RunCheckpoint,
    RunConfig,
    RunLogger,
    ended_run,
    plan_resume,
)
from mlnet_lightning.data import ClassificationData
from mlnet_lightning.imports import class_spelling, import_named
from mlnet_lightning.models import MLP, MODELS, TutorialModule, Wrapped
from mlnet_lightning.models.base import TrainingDiverged
from mlnet_lightning.pictures import Pictures
from mlnet_lightning.seeds import StackedCopies, check_memory

TRAINER_OPTIONS = set(inspect.signature(L.Trainer).parameters)
# --check_val_every_n_epoch's default: 0, which Lightning would divide by, stands for validation_every().
AUTO_VALIDATION = 0
UNBOUNDED_VALIDATION_EVERY = 1000


def validation_every(max_epochs: int | None, max_steps: int = -1) -> int:
    """The default validation cadence: the largest power of ten that leaves ten validations in the run (1,000
    for the tutorial's 10,000 epochs; an epoch takes a step at least, so `max_steps` bounds the run too).
    Each validation is an epoch that Lightning runs with all its hooks, logging and checkpoint checks
    (4.7-6 ms here against 0.25-0.4 ms for an epoch of the fast path): a fixed 100 cost a 10,000-epoch run
    10-14% even before the fast path replayed its epochs (docs/benchmarks.md), and a fixed 1,000 would
    leave shorter runs with no validation and no checkpoint. A power of ten stays the same when a resumed
    run's length changes within its decade (1,500 then 3,000 epochs: every 100)."""
    bounds = [limit for limit in (max_epochs, max_steps) if limit is not None and limit >= 0]
    if not bounds:
        return UNBOUNDED_VALIDATION_EVERY
    every = 1
    while every * 100 <= min(bounds):
        every *= 10
    return every


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit status 2."""


class CollectiveFailed(Exception):
    """The processes of a several-device run did not complete a collective operation within the
    strategy's timeout (one of them died, or code ran a collective on some ranks only): one line, exit 1."""


def resolve_model(name: str) -> tuple[str, type[L.LightningModule]]:
    """A network's name, `module.Class` importable from the working directory, or `path/to/file.py:Class`."""
    if name in MODELS:
        return name, MODELS[name]
    in_file = ":" in name
    location, _, class_name = name.rpartition(":" if in_file else ".")
    if not location or (in_file and not location.endswith(".py")):
        nearest = difflib.get_close_matches(name, [*MODELS, "all"], n=1)
        hint = f"did you mean {nearest[0]!r}? Or choose" if nearest else "choose"
        choices = f"{', '.join(MODELS)}, all, module.Class or path/to/file.py:Class"
        raise UsageError(f"unknown model {name!r}: {hint} {choices}")
    try:
        model_class = import_named(name)
    except (ImportError, AttributeError, FileNotFoundError) as error:
        raise UsageError(f"cannot import model {name!r}: {error}") from None
    except Exception as error:  # the user's file itself fails: a syntax error, a name error, ...
        raise UsageError(f"cannot import model {name!r}: {type(error).__name__}: {one_line_of(error)}") from None
    if not (inspect.isclass(model_class) and issubclass(model_class, nn.Module)):
        raise UsageError(f"model {name!r} is not an nn.Module or a LightningModule")
    return class_name.lower(), model_class


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
    chosen.update(config.model_args or {})  # a network of one's own: its own options (--model.width 8)
    if stacks_copies(config):
        return build_copies(model_class, config, {**offered, **chosen}, data)
    network = model_class.__name__
    if not issubclass(model_class, L.LightningModule):  # a plain nn.Module, which Wrapped trains
        offered.update(network=class_spelling(model_class), network_args=config.model_args or {})
        chosen = {key: value for key, value in chosen.items() if key not in offered["network_args"]}
        model_class = Wrapped
    accepted = inspect.signature(model_class).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    refused = [key for key in chosen if not (takes_all or key in accepted)]
    if refused:
        raise UsageError(f"--{refused[0]}: {network}'s constructor takes no {refused[0]} argument")
    try:
        return model_class(**{k: v for k, v in offered.items() if takes_all or k in accepted}, **chosen)
    except TypeError as error:  # a network of one's own whose constructor wants an argument of its own
        reason = one_line_of(error)
        raise UsageError(reason if reason.startswith(network) else f"{network}: {reason}") from None


def one_line_of(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def check_forward(model: TutorialModule, data: ClassificationData) -> None:
    """Run the network once on two of the data's points before anything is written, so that a network of
    one's own with no forward, or layers that do not fit the data, is refused in one line and leaves no run
    folder, rather than failing in its first step. Nothing the fit sees changes: evaluation mode (no batch
    statistics updated), no gradient, and the random state as it was."""
    name, points = model.network_name, data.x_train[:2]
    training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            output = model.eval()(points)
    except NotImplementedError:
        raise UsageError(f"{name} has no forward: write forward(self, x), returning a score for each class") from None
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        reason = one_line_of(error)
        raise UsageError(f"{name}: its forward fails on points of {data.num_features} inputs: {reason}") from None
    finally:
        model.train(training)
    expected = [len(points), data.num_classes]
    shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if shape != expected:
        raise UsageError(
            f"{name}: its forward returns {shape} for {len(points)} points, "
            f"not {expected} ({data.num_classes} classes in the data)"
        )


def stacks_copies(config: Namespace) -> bool:
    return config.seeds > 1 or config.lrs is not None


def build_copies(
    model_class: type[L.LightningModule], config: Namespace, offered: dict[str, Any], data: ClassificationData
) -> StackedCopies:
    """--seeds and --lrs: every (rate, seed) copy of the network, stacked on one device, if they fit."""
    if not issubclass(model_class, TutorialModule):
        raise UsageError(f"--seeds and --lrs stack subclasses of TutorialModule; {model_class.__name__} is not one")
    optimizer_lr = (offered.get("optimizer") or {}).get("init_args", {}).get("lr")  # --optimizer.lr
    if optimizer_lr is not None and config.lrs is not None:
        raise UsageError("--lrs gives the stacked copies their rates: give it without --optimizer.lr")
    lrs = [config.lr if optimizer_lr is None else optimizer_lr] if config.lrs is None else learning_rates(config.lrs)
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
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Fit one network, logging under `run_name` (default: the network's name), on the configured
    data unless given, its progress bar made by `make_bar`; returns its summary."""
    data = data or build_data(config)
    torch.manual_seed(config.seed)  # the same start for networks that take no seed of their own
    model = build_model(model_class, config, data)
    if isinstance(model, TutorialModule):
        check_forward(model, data)
    if not config.fast_path:
        model.fast_path = False
    trainer_options = {k: v for k, v in config.items(branches=True) if k in TRAINER_OPTIONS}
    if trainer_options["check_val_every_n_epoch"] == AUTO_VALIDATION:
        trainer_options["check_val_every_n_epoch"] = validation_every(config.max_epochs, config.max_steps)
    runs_dir = Path(trainer_options["default_root_dir"]) / (run_name or name)
    resume = plan_resume(config.ckpt_path, runs_dir, model, data, config.max_epochs) if config.ckpt_path else None
    if config.ckpt_path and resume is None:
        print(f"train.py: note: no last.ckpt in the newest run under {runs_dir}; starting a new run", file=sys.stderr)
    try:
        return fit(name, model, data, config, parser, trainer_options, runs_dir, resume, make_bar, callbacks)
    finally:
        if resume is not None:
            resume.release()


def train_or_keep(
    name: str,
    model_class: type[L.LightningModule],
    config: Namespace,
    parser: LightningArgumentParser,
    run_name: str | None = None,
    **train_options: Any,
) -> dict[str, Any]:
    """train_one for a command of several networks: with `--ckpt_path last`, a network whose run has already
    ended at --max_epochs keeps it (its summary.json), so that the same command finishes what a stop left."""
    runs_dir = Path(config.default_root_dir) / (run_name or name)
    kept = ended_run(config.ckpt_path, runs_dir, config.max_epochs)
    if kept is None:
        return train_one(name, model_class, config, parser, run_name, **train_options)
    print(f"train.py: note: {runs_dir} ended at {config.max_epochs} epochs already; keeping it", file=sys.stderr)
    return kept


def fit(
    name: str,
    model: L.LightningModule,
    data: ClassificationData,
    config: Namespace,
    parser: LightningArgumentParser,
    trainer_options: dict[str, Any],
    runs_dir: Path,
    resume: Resume | None,
    make_bar: Callable[..., Any],
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """train_one's fit, its callbacks and loggers made from the options."""
    stop = StopOnInterrupt()
    summary = RunSummary(name, stop)
    extra = list(callbacks)
    callbacks = [summary, stop, RunCheckpoint(), *instantiate_all(trainer_options.pop("callbacks")), *extra]
    bar = EpochProgressBar(make_bar)
    if trainer_options["enable_progress_bar"] is not False:
        callbacks.append(bar)
    latest = LatestCheckpoint(config.checkpoint_every)
    if trainer_options["enable_checkpointing"] is not False:
        # The best first: last.ckpt, written after it at the same validation, then records its choice.
        callbacks += [BestCheckpoint(), latest]
    # fast_dev_run is a dry run: Lightning writes no logs or checkpoints, and the run writes nothing either.
    dry_run = bool(trainer_options["fast_dev_run"])
    if not dry_run:
        run_config = config.clone()
        run_config.check_val_every_n_epoch = trainer_options["check_val_every_n_epoch"]
        run_config.model = name if config.model == "all" else config.model
        run_config.ckpt_path = None  # the config reruns the run; --ckpt_path continues it
        callbacks.append(RunConfig(parser, run_config))
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
        options = {name: instantiated(value) for name, value in trainer_options.items()}
        options["plugins"] = with_whole_checkpoints(options["plugins"])
        trainer = L.Trainer(**options, logger=logger, callbacks=callbacks)
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
        with stop.listening(trainer):
            try:
                trainer.fit(model, datamodule=data, ckpt_path=resume.checkpoint if resume else None)
            finally:
                bar.close()  # a failed fit's error line then starts on a line of its own
    except RunInterrupted:
        pass  # a second signal: the summary so far is below
    except SIGTERMException:  # Lightning's own stop, under several processes: every rank stops at one batch
        stop.signum = signal.SIGTERM
    except TrainingDiverged as error:
        raise TrainingDiverged(f"{name}: {error}; last good checkpoint: {latest.kept() or 'none'}") from None
    except OSError as error:
        raise CannotWrite.during(name, error, trainer.log_dir, latest.kept()) from None
    except (MisconfigurationException, RuntimeError) as error:  # an option Lightning refuses for this network
        refused = refused_option(error)
        if refused is not None:
            if resume is None and isinstance(logger, RunLogger):  # a new run that never was: no folder left behind
                shutil.rmtree(trainer.log_dir, ignore_errors=True)
            raise UsageError(f"{name}: {refused}") from None
        if trainer.world_size > 1:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise CollectiveFailed(
                f"{name}: the {trainer.world_size} processes stopped waiting for each other ({reason}); "
                f"last good checkpoint: {latest.kept() or 'none'}"
            ) from None
        raise
    if stop.requested:
        raise RunInterrupted(summary.summary, latest.kept(), stop.signum)
    return summary.summary


def refused_option(error: Exception) -> str | None:
    """The first line of an error by which Lightning refuses an option once the fit has begun (a callback
    monitoring a metric that is not logged: EarlyStopping's RuntimeError, ModelCheckpoint's
    MisconfigurationException); None for any other error."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, MisconfigurationException) or "conditioned on metric" in first_line:
        return first_line
    return None


def with_whole_checkpoints(plugins: Any) -> Any:
    """The Trainer's plugins, with checkpoints written whole (AtomicCheckpointIO) unless one of them is
    a checkpoint writer of the user's."""
    given = [] if plugins is None else plugins if isinstance(plugins, list) else [plugins]
    if any(isinstance(plugin, CheckpointIO) for plugin in given):
        return plugins
    return [*given, AtomicCheckpointIO()]


def instantiate_all(classes: Namespace | list[Namespace] | None) -> list[Any]:
    """Objects of the classes an option names (`--callbacks`, `--logger`): one, several or none."""
    if classes is None:
        return []
    return [instantiated(c) for c in (classes if isinstance(classes, list) else [classes])]


def instantiated(option: Any) -> Any:
    """A Trainer option as the Trainer takes it: a class named with its arguments (`--profiler SimpleProfiler
    --profiler.dirpath prof`, `--plugins ...`) made into its object; names and numbers as they are."""
    if isinstance(option, list):
        return [instantiated(item) for item in option]
    if isinstance(option, Namespace) and "class_path" in option:
        return instantiate_class((), option.as_dict())
    return option


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


def check_writable(folder: str | Path) -> None:
    """Fail before training, not after it, when the logs cannot be written in `folder` or, where it is yet
    to be made, in the nearest folder above it that exists (creating nothing: a command that fails later
    on a bad option leaves no folder behind)."""
    path = Path(folder).absolute()
    # A broken symbolic link does not exist, but mkdir cannot make a folder in its place either.
    existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    try:
        if existing.is_symlink() and not existing.exists():
            raise FileNotFoundError(2, f"{existing} is a broken symbolic link")
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to the log folder {folder}: {error.strerror or error}") from None
