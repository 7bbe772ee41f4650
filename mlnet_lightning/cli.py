"""The command line: jsonargparse (with Lightning's parser) builds --help, --config and --print_config."""

from __future__ import annotations

import gc
import inspect
import logging
import re
import signal
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ActionConfigFile, Namespace
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_only
from torch.optim.lr_scheduler import LRScheduler

from mlnet_lightning.callbacks import RunInterrupted
from mlnet_lightning.checkpoints import (
    CannotWrite,
    check_resumable,
)
from mlnet_lightning.data import ClassificationData
from mlnet_lightning.models import MLP, MODELS, TUTORIAL_MODELS, TutorialModule
from mlnet_lightning.models.base import TrainingDiverged
from mlnet_lightning.parallel import WorkerDied, auto_jobs, can_train_in_parallel, train_in_parallel
from mlnet_lightning.runs import (
    AUTO_VALIDATION,
    UNBOUNDED_VALIDATION_EVERY,
    UsageError,
    check_writable,
    resolve_model,
    stacks_copies,
    train_one,
)
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
from mlnet_lightning.tables import format_copies_table, format_table

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
            "check_val_every_n_epoch": AUTO_VALIDATION,
            "default_root_dir": "lightning_logs",
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
        }
    )
    validation = next(action for action in parser._actions if action.dest == "check_val_every_n_epoch")
    validation.help += (
        f" Here the default, {AUTO_VALIDATION}, validates every 1, 10, 100, ... epochs: the largest power of ten "
        f"that leaves ten validations in max_epochs, or in max_steps if fewer (every epoch below 100 epochs, "
        f"every 1000 for 10,000; {UNBOUNDED_VALIDATION_EVERY} with neither bounded)."
    )
    return parser


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
    every = config.check_val_every_n_epoch
    if every is not None and every < AUTO_VALIDATION:  # Lightning would divide by it mid-fit
        raise UsageError(
            f"--check_val_every_n_epoch must be a positive integer, {AUTO_VALIDATION} (a power of ten by max_epochs) "
            f"or null (validate by steps), got {every}"
        )
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
    """Quiet Lightning, let --model my_file.MyNet import from the working directory, and set the imports'
    objects aside from the garbage collector."""
    _quiet_lightning()
    sys.path.insert(0, str(Path.cwd()))
    # torch and Lightning leave about a million objects that live as long as the process: frozen, the
    # collector no longer walks them, which took 1 s at the interpreter's exit (measured on 2 cores), and
    # forked --jobs workers share their memory pages instead of copying them.
    gc.freeze()


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
