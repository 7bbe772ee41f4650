"""The command line: jsonargparse (with Lightning's parser) builds --help, --config and --print_config."""

from __future__ import annotations

import difflib
import gc
import inspect
import json
import logging
import math
import re
import signal
import sys
import textwrap
import threading
import warnings
from argparse import Action, ArgumentError
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import lightning.pytorch.callbacks
import torch
from jsonargparse import ActionConfigFile, DefaultHelpFormatter, Namespace
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_only
from torch.optim.lr_scheduler import LRScheduler

from mlnet_lightning import data as data_module
from mlnet_lightning.callbacks import RunInterrupted
from mlnet_lightning.checkpoints import (
    CannotWrite,
    check_resumable,
    ended_run,
    resume_path,
)
from mlnet_lightning.data import ClassificationData
from mlnet_lightning.models import MLP, MODELS, TUTORIAL_MODELS, TutorialModule
from mlnet_lightning.models.base import TrainingDiverged
from mlnet_lightning.parallel import WorkerDied, auto_jobs, can_train_in_parallel, train_in_parallel
from mlnet_lightning.runs import (
    AUTO_VALIDATION,
    UNBOUNDED_VALIDATION_EVERY,
    CollectiveFailed,
    UsageError,
    build_data,
    check_writable,
    learning_rates,
    resolve_model,
    stacks_copies,
    train_one,
    train_or_keep,
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
    "callbacks": "EarlyStopping, ModelCheckpoint, LearningRateMonitor",
}
# The classes a class option takes by name, for "did you mean".
CLASS_MODULES = {
    "data": (data_module, ClassificationData),
    "optimizer": (torch.optim, torch.optim.Optimizer),
    "lr_scheduler": (torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler),
    "callbacks": (lightning.pytorch.callbacks, L.Callback),
}


def class_names(option: str) -> list[str]:
    module, base = CLASS_MODULES[option]
    return [name for name, value in vars(module).items() if inspect.isclass(value) and issubclass(value, base)]


# Lines of jsonargparse's messages about the other types an option accepts, not about the mistake.
JSONARGPARSE_NOISE = (
    "Expected a path but",
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Expected a <class 'NoneType'>",
    "Given value",
)


# The project's classes that its class options offer: the data sets. Its callbacks, loggers, checkpoint IO and
# hand-written update are parts of every run (each run adds its own), not choices.
OFFERED_PROJECT_CLASSES = "mlnet_lightning.data."


def _offered(known: re.Match) -> str:
    paths = [
        path
        for path in known.group(1).split(", ")
        if not path.startswith("mlnet_lightning.") or path.startswith(OFFERED_PROJECT_CLASSES)
    ]
    return f", known subclasses: {', '.join(paths)}" if paths else ""


class OfferedClassesHelp(DefaultHelpFormatter):
    """jsonargparse's help, whose lists of a class option's known subclasses (every subclass imported, the
    project's internal callbacks included) keep only the classes one may give."""

    def _get_help_string(self, action: Action) -> str:
        # A Union of the classes offered would refuse the callbacks and loggers of one's own (an import path).
        return re.sub(r", known subclasses: ([^)]*)", _offered, super()._get_help_string(action))


def build_parser(trainer: bool = True) -> LightningArgumentParser:
    """train.py's options: the project's, then (unless `trainer` is False, for the short --help) the Trainer's."""
    parser = LightningArgumentParser(
        prog="train.py",
        description="Train the feed-forward networks of the PyTorch nn tutorial with Lightning.",
        exit_on_error=False,
        formatter_class=OfferedClassesHelp,
        usage=None if trainer else "train.py [fit|validate|test|predict] [options]",  # the short --help says more
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
        "--model_args",
        type=dict | None,
        default=None,
        help="your network's own options: --model.width 8 (or --model.init_args.width 8)",
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
    if not trainer:
        return parser
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


# Where the project's default of a Trainer option is not Lightning's.
TRAINER_DEFAULTS = {
    "max_epochs": "10000, the tutorial's",
    "check_val_every_n_epoch": "a power of ten leaving ten validations",
    "default_root_dir": "lightning_logs",
    "num_sanity_val_steps": "0",
    "enable_model_summary": "false",
}


# The Trainer's options: train.py's at the top level, and as LightningCLI's --trainer.X.
TRAINER_OPTIONS = list(inspect.signature(L.Trainer).parameters)


def short_help() -> str:
    """--help: the project's options in full, the Trainer's by name (`--help trainer`: all of them, documented)."""
    names = [
        f"--{name}" + (f" ({TRAINER_DEFAULTS[name]})" if name in TRAINER_DEFAULTS else "") for name in TRAINER_OPTIONS
    ]
    trainer = textwrap.fill(", ".join(names), width=100, initial_indent="  ", subsequent_indent="  ")
    # jsonargparse lists every subclass a class option could take (torch's optimizers and schedulers, 30 lines,
    # and classes of the project's own): --data.help, --optimizer.help NAME document them one at a time.
    project = re.sub(r",\s+known\s+subclasses:[^)]*\)", ")", build_parser(trainer=False).format_help())
    return (
        project.rstrip()
        + "\n\nLightning's Trainer options, at the top level (or as LightningCLI's --trainer.max_epochs ...) with "
        "Lightning's meaning\nand defaults but those in parentheses (`train.py --help trainer` documents each):\n"
        + trainer
        + "\n\nLightningCLI's subcommands: fit (what train.py does; optional), validate and test --ckpt_path PATH|last "
        "(evaluate.py),\npredict --ckpt_path PATH|last --input points.csv --output FILE|- (predict.py); "
        "`train.py validate --help` says more.\n"
    )


# The project's former names of Trainer options.
RENAMED = {"--epochs": "--max_epochs", "--data.val_every": "--check_val_every_n_epoch"}
# Options that take one class or a list of them: given again, they add one more (jsonargparse's own
# `--callbacks+ X`) rather than replace the one before.
LIST_OPTIONS = ("callbacks", "logger")


def flat_trainer_options(argv: list[str]) -> list[str]:
    """LightningCLI's `--trainer.max_epochs 7` (`--trainer.callbacks.monitor X`, `--trainer.logger=Y`) as this
    command's top-level `--max_epochs 7`, so that one parser and one spelling of each option serve both. A name
    that is not the Trainer's keeps its spelling, for the did-you-mean."""
    rewritten = []
    for arg in argv:
        name = arg.partition("=")[0].removeprefix("--trainer.")
        if arg.startswith("--trainer.") and re.split(r"[.+]", name)[0] in TRAINER_OPTIONS:
            arg = "--" + arg.removeprefix("--trainer.")
        rewritten.append(arg)
    return rewritten


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


# LightningCLI's other subcommands: the script each runs (given --ckpt_path as its --ckpt), and what it does.
STAGES = {
    "validate": "evaluate.py, the loss and accuracy on the checkpoint's validation split (or on --data points.csv)",
    "test": "evaluate.py on the checkpoint's test split: the points drawn apart by --data.test_size, else the "
    "validation split, as Lightning's test stage (or on --data points.csv)",
    "predict": "predict.py, the class and class probabilities of each point of --input points.csv, written to "
    "--output (a CSV; - for stdout)",
}


def option_names(parser: LightningArgumentParser) -> list[str]:
    """Every option's name as written on the command line (`data.n_samples`, not its init_args key)."""
    return [key.replace(".init_args.", ".") for key in parser.get_defaults().keys()]  # noqa: SIM118 (a Namespace)


def did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    """`; did you mean <prefix>X?` for the choices nearest to a misspelt `word`, or nothing."""
    nearest = difflib.get_close_matches(word.lower(), [choice.lower() for choice in choices], n=3, cutoff=0.6)
    by_lower = {choice.lower(): choice for choice in choices}
    return f"; did you mean {' or '.join(prefix + by_lower[name] for name in nearest)}?" if nearest else ""


def unrecognized(arguments: list[str], names: list[str]) -> str:
    """The first unknown option, with the spelling this command takes: underscores (--max-epochs), or the
    nearest names; for LightningCLI's --trainer.X the Trainer's as --trainer.X, else the command's own."""
    argument = next((arg for arg in arguments if arg.startswith("--")), arguments[0])
    name = argument.removeprefix("--").partition("=")[0]
    prefix, choices = ("--trainer.", TRAINER_OPTIONS) if name.startswith("trainer.") else ("--", names)
    name = name.removeprefix("trainer.")
    if name.replace("-", "_") in choices:
        hint = f"; did you mean {prefix}{name.replace('-', '_')}?"
    elif prefix == "--trainer.":  # the Trainer's nearest, else the command's own (--trainer.seed: --seed)
        hint = did_you_mean(name, choices, prefix) or did_you_mean(name, names, prefix="--")
    else:
        hint = did_you_mean(name, names, prefix="--")
    if not argument.startswith("--"):
        return f"unrecognized argument {argument!r} (options start with --)"
    return f"unrecognized option {argument}{hint}"


def network_options(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The arguments without a network's own options, and those options as given: LightningCLI's
    `--model.width 8`, `--model.init_args.width 8`, `--model.class_path X` (the network, as --model X)."""
    rest, options = [], {}
    arguments = iter(argv)
    for argument in arguments:
        if not argument.startswith("--model."):
            rest.append(argument)
            continue
        key, has_value, value = argument.removeprefix("--model.").partition("=")
        value = value if has_value else next(arguments, "")
        key = key.removeprefix("init_args.")
        if key == "class_path":
            rest += ["--model", value]
        else:
            options[key] = value
    return rest, options


def typed_network_options(given: dict[str, str], models: list[tuple[str, type]]) -> dict[str, Any]:
    """A network's own options (`--model.X`), checked and converted against its constructor's signature."""
    if len(models) != 1:
        raise UsageError(f"--model.{next(iter(given))}: a network's own options need one network (--model NAME)")
    name, model_class = models[0]
    first = next(iter(given))
    if issubclass(model_class, MLP):
        raise UsageError(f"--model.{first}: mlp takes its options as --mlp.hidden, --mlp.activation, --mlp.init")
    project = set(inspect.signature(TutorialModule).parameters)  # --lr, --seed, --logits, the data's sizes
    shared = sorted(project & set(given))
    if shared:
        raise UsageError(f"--model.{shared[0]}: give it as --{shared[0]} (every network takes it)")
    options = LightningArgumentParser(exit_on_error=False)
    options.add_class_arguments(model_class, skip=project, instantiate=False)
    argv = [f"--{key}={value}" for key, value in given.items()]
    try:
        return options.parse_args(argv).as_dict()
    except ArgumentError as error:
        unknown = re.match(r"unrecognized arguments: --(\w+)", str(error), re.IGNORECASE)
        if unknown:
            known = list(options.get_defaults().keys())  # noqa: SIM118 (a Namespace)
            hint = did_you_mean(unknown.group(1), known, "--model.") or f" (it takes {', '.join(known) or 'none'})"
            raise UsageError(f"--model.{unknown.group(1)}: {name} takes no such option{hint}") from None
        raise UsageError(f"--model.{one_line(error).removeprefix('--')}") from None


def misspelt(error: ArgumentError, parser: LightningArgumentParser) -> UsageError | None:
    """The parser's error about an unknown option (of the command or of the data class) with the nearest
    spellings; None for any other error."""
    unknown = re.match(r"unrecognized arguments: (.*)", str(error), re.IGNORECASE)
    if unknown:
        return UsageError(unrecognized(unknown.group(1).split(), option_names(parser)))
    not_accepted = re.search(r"class_path '[\w.]*?(\w+)':\s+Option '(\w+)' is not accepted", str(error))
    if not_accepted and str(error).startswith('Parser key "data"'):
        data_class, name = not_accepted.groups()
        options = inspect.signature(getattr(data_module, data_class, ClassificationData)).parameters
        hint = did_you_mean(name, [option for option in options if option != "kwargs"], "--data.")
        return UsageError(f"--data.{name}: {data_class} takes no such option{hint}")
    return None


def parse(parser: LightningArgumentParser, argv: list[str] | None) -> tuple[Namespace, list[tuple[str, type]]]:
    """The options, and the networks they name; raises ArgumentError or UsageError."""
    argv = appending_repeats(flat_trainer_options(sys.argv[1:] if argv is None else argv))
    argv, given_model_args = network_options(argv)
    if given_model_args:  # as --model_args, so that --print_config and config.yaml show them
        argv += ["--model_args", json.dumps(given_model_args)]
    if any(arg.startswith("--logger.") and "save_dir" in arg for arg in argv):
        raise UsageError("--logger.save_dir: loggers write under --default_root_dir: give that instead")
    for old, new in RENAMED.items():
        if any(arg.partition("=")[0] == old for arg in argv):
            raise UsageError(f"{old} is gone: Lightning's {new} says it (an epoch is one pass over the data)")
    if {"-h", "--help"} & set(argv):
        asked = argv[argv.index("--help" if "--help" in argv else "-h") + 1 :]
        print(parser.format_help() if asked[:1] == ["trainer"] else short_help(), end="")
        raise SystemExit(0)
    if argv and argv[0] == "fit":  # LightningCLI's subcommand for what train.py does
        argv = argv[1:]
    try:
        config = parser.parse_args(argv)
    except ArgumentError as error:
        raise misspelt(error, parser) or error from None
    check_ranges(config)
    names = list(TUTORIAL_MODELS) if config.model == "all" else [config.model]
    models = [resolve_model(name) for name in names]
    if config.model_args:  # given on the command line as text, or typed in a config
        given = {key: v if isinstance(v, str) else json.dumps(v) for key, v in config.model_args.items()}
        config.model_args = typed_network_options(given, models)
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
            runs_dir = Path(config.default_root_dir) / name
            if ended_run(config.ckpt_path, runs_dir, config.max_epochs) is None:  # an ended one is kept
                check_resumable(config.ckpt_path, runs_dir, config.max_epochs)
    check_log_folders(config, [name for name, _ in models])
    check_data(config)
    return config, models


FLOAT32_MAX = torch.finfo(torch.float32).max
INT64 = torch.iinfo(torch.int64)
# torch.manual_seed's seeds (its docstring; it remaps the negative ones).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
# Options checked against tighter ranges of their own: --seed here, --data.seed by the data module.
OWN_RANGES = ("seed", "data.seed")


def check_ranges(config: Namespace) -> None:
    """Refuse, before anything converts them mid-run, numbers the run cannot hold: floats beyond float32's
    range (the networks train in float32), integers beyond int64's, and seeds torch.manual_seed refuses."""
    last_seed = config.seed + config.seeds - 1  # --seeds trains copies with seeds --seed, --seed+1, ...
    if not SEED_MIN <= config.seed <= SEED_MAX:
        raise UsageError(f"--seed: {config.seed} is beyond torch.manual_seed's range, -2**63 to 2**64 - 1")
    if last_seed > SEED_MAX:
        raise UsageError(
            f"--seed {config.seed} with --seeds {config.seeds}: the last copy's seed, {last_seed}, is beyond "
            "torch.manual_seed's range, at most 2**64 - 1"
        )
    rates = learning_rates(config.lrs) if config.lrs is not None else []
    given = [("lrs", rate) for rate in rates]
    for option, number in [*numbers(config), *given]:
        if option in OWN_RANGES:
            continue
        # Infinities convert to float32; only finite numbers beyond its largest fail (mid-run, in torch).
        if isinstance(number, float) and math.isfinite(number) and abs(number) > FLOAT32_MAX:
            raise UsageError(
                f"--{option}: {number:g} is beyond float32's range, ±{FLOAT32_MAX:.2g} (the networks train in float32)"
            )
        if isinstance(number, int) and not INT64.min <= number <= INT64.max:
            raise UsageError(f"--{option}: {number} is beyond int64's range, {INT64.min} to {INT64.max}")


def numbers(value: Any, option: str = "") -> Iterator[tuple[str, int | float]]:
    """Every number in `value` (the options, a class's arguments, a list), with the option that gave it as
    the command line names it: `optimizer.lr` for `optimizer.init_args.lr`."""
    if isinstance(value, Namespace):
        for key, item in value.items():
            name = key.replace("init_args.", "")
            yield from numbers(item, f"{option}.{name}" if option else name)
    elif isinstance(value, dict):
        yield from numbers(Namespace(**value), option)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from numbers(item, option)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield option, value


def check_log_folders(config: Namespace, networks: list[str]) -> None:
    """Refuse, before anything is written, folders the runs cannot write in: each network's under
    --default_root_dir (where a new run makes its version_N), and a resumed run's own."""
    for name in networks:
        runs_dir = Path(config.default_root_dir) / name
        check_writable(runs_dir)
        checkpoint = resume_path(config.ckpt_path, runs_dir) if config.ckpt_path else None
        if checkpoint is not None and checkpoint.parent.name == "checkpoints":  # a run folder's: it goes on there
            check_writable(checkpoint.parent.parent)
            check_writable(checkpoint.parent)


def check_data(config: Namespace) -> None:
    """Build the data set once, so that its own checks (its size against the split and the memory, its
    seed) refuse a bad --data option before anything is written. The data modules' ValueErrors begin with
    the argument at fault: here they name it as the command line does (`--data.n_samples 10: ...`)."""
    try:
        build_data(config)
    except ValueError as error:
        argument = str(error).partition(" ")[0]
        if argument in (config.data.get("init_args") or Namespace()):
            raise UsageError(f"--data.{error}") from None
        raise
    # Lightning's saved hyperparameters make a data module a cycle: free it now, before the runs build
    # theirs, not at the collector's next pass.
    gc.collect()


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
            given = unknown.group(1)
            nearest = did_you_mean(given, class_names(option))
            hint = nearest or f": give a name such as {examples}, or an import path"
            return f"--{option}: unknown class {given!r}{hint}"
    message = " ".join(reasons)
    not_a_list = re.search(r"Expected a <class 'list'>\. Got value: (\S+,\S*)", message)
    if not_a_list and not not_a_list.group(1).startswith("["):
        value = not_a_list.group(1)
        return f"--{option}: {value} is not a list; write it in brackets: --{option} [{value}]"
    if given and not re.search(rf"(?<![\w.<>=-]){re.escape(given)}(?![\w.-])", message):  # not echoed already
        message += f" (given {given})"
    return f"--{option}: {message}"


def prepare() -> None:
    """Quiet Lightning, let --model my_file.MyNet import from the working directory, and set the imports'
    objects aside from the garbage collector."""
    _quiet_lightning()
    threading.excepthook = _quiet_failed_writes
    sys.path.insert(0, str(Path.cwd()))
    # torch and Lightning leave about a million objects that live as long as the process: frozen, the
    # collector no longer walks them, which took 1 s at the interpreter's exit (measured on 2 cores), and
    # forked --jobs workers share their memory pages instead of copying them.
    gc.freeze()


def _quiet_failed_writes(args: threading.ExceptHookArgs) -> None:
    """TensorBoard writes its events on a thread of its own, which prints a traceback when a write fails
    (a full disk) and hands the error to the training, which reports it in one line: no traceback then."""
    from_tensorboard = type(args.thread).__module__.startswith("tensorboard.")
    if not (from_tensorboard and issubclass(args.exc_type, OSError)):
        threading.__excepthook__(args)


def print_error(program: str, error: BaseException | str) -> None:
    """The one-line error of the command-line tools: `program: error: what is wrong`."""
    message = one_line(error) if isinstance(error, BaseException) else " ".join(error.split())
    print(f"{program}: error: {message}", file=sys.stderr)


@dataclass
class RunsSoFar:
    """A training command's finished runs, and how it tabulates them (its body sets `table` once the
    options are read): what it prints when a stop request ends it midway."""

    summaries: list[dict[str, Any]] = field(default_factory=list)
    table: Callable[[list[dict[str, Any]]], str] = format_table


def run_training(program: str, train: Callable[[RunsSoFar], str]) -> int:
    """Run a training command's body, which returns its table, and print the table; or say in one line
    `program: ...` why it failed or stopped. Returns the exit status: 0 when done, 2 for bad input, 1 when
    training diverged, a write failed or a --jobs worker failed, 130 after Ctrl-C, 143 after SIGTERM (a stop
    during training prints the table of the runs so far and how to resume)."""
    previous_handlers = saved_handlers()
    take_signals({signal.SIGTERM: raise_terminated})  # before the fit, nothing needs saving
    runs = RunsSoFar()
    try:
        table = train(runs)
    except (ArgumentError, UsageError, ValueError) as error:
        print_error(program, error)
        return 2
    except TrainingDiverged as error:
        print_error(program, f"training diverged: {error}")
        return 1
    except (WorkerDied, CannotWrite) as error:
        print_error(program, error)
        return 1
    except CollectiveFailed as error:
        rank_zero_only(print_error)(program, error)  # every process fails alike: one line is enough
        return 1
    except RunInterrupted as interrupted:
        so_far = [*runs.summaries, interrupted.summary] if interrupted.summary else runs.summaries
        if so_far:
            rank_zero_only(print)(runs.table(so_far))  # once, not once per DDP process
        if interrupted.checkpoint:
            advice = f"resume with the same command and --ckpt_path last (checkpoint: {interrupted.checkpoint})"
        else:
            advice = "no checkpoint was written"
        rank_zero_only(print)(f"{program}: stopped by {describe(interrupted.signum)}; {advice}", file=sys.stderr)
        return exit_status(interrupted.signum)
    except KeyboardInterrupt:  # before or between fits, where nothing needs saving
        return stopped_before_training(program, signal.SIGINT)
    except Terminated as stop:
        return stopped_before_training(program, stop.signum)
    finally:
        restore_handlers(previous_handlers)
    rank_zero_only(print)(table)  # once, not once per DDP process
    return 0


def main(argv: list[str] | None = None) -> int:
    """train.py, its exit status as run_training's; LightningCLI's validate, test and predict as run_stage's."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STAGES:
        return run_stage(argv[0], argv[1:])
    return run_training("train.py", lambda runs: train_networks(argv, runs))


def run_stage(stage: str, argv: list[str]) -> int:
    """`train.py validate|test|predict --ckpt_path PATH ...`: the script that does it (STAGES), given its own
    --ckpt for LightningCLI's --ckpt_path; its output and exit status."""
    from mlnet_lightning import inference  # not at the top: it imports print_error from here

    arguments = [re.sub(r"^--ckpt_path(?==|$)", "--ckpt", arg) for arg in argv]
    if {"-h", "--help"} & set(arguments):
        print(textwrap.fill(f"train.py {stage} runs {STAGES[stage]}. Its options, --ckpt_path given as --ckpt:") + "\n")
    elif not any(arg.partition("=")[0] == "--ckpt" for arg in arguments):
        print_error(
            "train.py",
            f"{stage} needs a checkpoint: --ckpt_path PATH (or last: the newest last.ckpt under ./lightning_logs)",
        )
        return 2
    if stage == "predict":
        return inference.predict_main(arguments)
    return inference.evaluate_main(arguments, split="test" if stage == "test" else "val")


def train_networks(argv: list[str] | None, runs: RunsSoFar) -> str:
    """train.py's work: the networks its options name, in turn or --jobs at a time; returns their table."""
    prepare()
    parser = build_parser()
    config, models = parse(parser, argv)
    runs.table = partial(format_table, logits=config.logits)
    jobs = min(config.jobs or auto_jobs(config, len(models)), len(models))
    train = train_or_keep if len(models) > 1 else train_one
    if jobs > 1:
        train_in_parallel(train, models, config, parser, jobs, runs.summaries)
    else:
        for name, model_class in models:
            runs.summaries.append(train(name, model_class, config, parser))
    return format_copies_table(runs.summaries) if stacks_copies(config) else runs.table(runs.summaries)


def _quiet_lightning() -> None:
    # The summary table is the output; Lightning's start-up notes and tips would bury it.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*will run with no optimizer.*")  # hand-written updates, on purpose
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # a resumed run's own checkpoints
    warnings.filterwarnings("ignore", message=".*Encountered `nan` values.*")  # a divergence has its own line
