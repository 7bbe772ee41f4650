"""Search the tutorial's "what's next" with Optuna: each trial a normal train.py run, the study in a database.

`python scripts/search.py --model mlp --data BlobData --trials 40 --max_epochs 1000`: the search's own options
(search_parser) and, for the rest, train.py's, the same for every trial. A trial draws its parameters from the space
file (configs/search/*.yaml, docs/search.md), adds them to those options and trains through train.py's own parse and
train_one, into `<default_root_dir>/search/<study>/trial_<n>/version_<k>/`. The study lives in SQLite
(`<default_root_dir>/search/<study>.db`) or at any `--storage` URL Optuna takes, so that a stopped or killed search
resumes with the same command and processes on many machines work on one study.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import inspect
import json
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlnet_lightning.runs import UsageError

SPACES = Path(__file__).resolve().parent.parent / "configs" / "search"
# The space's parameters, and the train.py options each becomes (trial_options).
PARAMETERS = ("optimizer", "lr", "momentum", "nesterov", "hidden", "activation", "init")
OPTIMIZER_PARAMETERS = ("optimizer", "lr", "momentum", "nesterov")
MLP_PARAMETERS = ("hidden", "activation", "init")
RANGES = ("lr", "momentum")  # the parameters that take {low, high}; the others take choices or a value
# Options of train.py that only say where and how a run is shown: a study may be continued with others.
OUTPUT_OPTIONS = ("config", "default_root_dir", "enable_progress_bar", "enable_model_summary", "pictures", "jobs")
OUTPUT_OPTIONS += ("checkpoint_every", "logger")
HOST = socket.gethostname()
EXAMPLES = ("SGD", "Adam", "AdamW", "RMSprop")


class SearchStopped(BaseException):
    """Ctrl-C or SIGTERM ended the search between or in its trials: the same command resumes it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SearchUsage(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as train.py's mistakes
        raise UsageError(message)


def search_parser() -> SearchUsage:
    parser = SearchUsage(
        prog="search.py",
        allow_abbrev=False,  # --seed is train.py's, --seeds the search's
        description="Search train.py's options with Optuna: each trial a train.py run under "
        "<default_root_dir>/search/<study>/trial_<n>/ (docs/search.md).",
        epilog="Every other option is train.py's (train.py --help), the same for every trial; here --model mlp and "
        "--pictures false unless given. Exit status: 0 done, 2 bad input, 1 a failed write or worker, 130 or 143 "
        "stopped by Ctrl-C or SIGTERM (the same command resumes the study).",
    )
    parser.add_argument(
        "--space", default=str(SPACES / "default.yaml"), help="the space file (configs/search/default.yaml)"
    )
    parser.add_argument("--trials", type=int, default=40, help="complete or pruned trials to end with (40)")
    parser.add_argument("--study", help="the study's name (default: <model>_<data>, such as mlp_BlobData)")
    parser.add_argument(
        "--storage", help="an Optuna storage URL (default: sqlite:///<default_root_dir>/search/<study>.db)"
    )
    parser.add_argument("--jobs", type=int, help="trials at once on this machine, one process each (one a core)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per trial, its score their mean val/acc (1)")
    parser.add_argument("--prune", choices=("true", "false"), default="true", help="prune hopeless trials (true)")
    parser.add_argument("--top", type=int, default=10, help="rows of the table of the best trials (10)")
    parser.add_argument("--sampler_seed", type=int, help="seed Optuna's sampler, for a repeatable search")
    return parser


# --- the space file -------------------------------------------------------------------------------------------


def read_space(path: str) -> dict[str, Any]:
    """The space file, checked: each parameter a value, {choices: [...]} or {low, high[, log, step]}."""
    try:
        space = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise UsageError(f"--space {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"--space {path}: not YAML: {' '.join(str(error).split())}") from None
    if not isinstance(space, dict) or not space:
        raise UsageError(f"--space {path}: a mapping of parameters is expected ({', '.join(PARAMETERS)})")
    for name, spec in space.items():
        where = f"--space {path}: {name}"
        if name not in PARAMETERS:
            near = difflib.get_close_matches(str(name), PARAMETERS, n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise UsageError(f"{where}: unknown parameter; {hint}the space takes {', '.join(PARAMETERS)}")
        if not isinstance(spec, dict):
            check_value(where, name, spec)
        elif set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"]:
            for value in spec["choices"]:
                check_value(where, name, value)
        elif name in RANGES and {"low", "high"} <= set(spec) <= {"low", "high", "log", "step"}:
            low, high = spec["low"], spec["high"]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
                raise UsageError(f"{where}: low and high are numbers, got {low!r} and {high!r}")
            if low > high:
                raise UsageError(f"{where}: low {low} is above high {high}")
            if name == "lr" and low <= 0:
                raise UsageError(f"{where}: learning rates are positive, got low {low}")
            if name == "momentum" and not 0 <= low <= high < 1:
                raise UsageError(f"{where}: momentum lies in [0, 1), got {low} to {high}")
            if spec.get("log") and spec.get("step"):
                raise UsageError(f"{where}: a range takes log or step, not both")
        else:
            ranges = "{low, high} (with log: true or a step), " if name in RANGES else ""
            raise UsageError(f"{where}: give a value, {ranges}or {{choices: [...]}}, a non-empty list")
    return space


def check_value(where: str, name: str, value: Any) -> None:
    import torch

    from mlnet_lightning.models.mlp import ACTIVATIONS, INITS

    classes = [n for n, c in vars(torch.optim).items() if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer)]
    optimizers = [*EXAMPLES, *sorted(set(classes) - {*EXAMPLES, "Optimizer", "LBFGS"})]  # LBFGS: a closure a step
    named = {"optimizer": optimizers, "activation": list(ACTIVATIONS), "init": list(INITS)}
    if name in named and value not in named[name]:
        near = difflib.get_close_matches(str(value), named[name], n=1)
        hint = f"did you mean {near[0]}? Or choose" if near else "choose"
        raise UsageError(f"{where}: unknown {name} {value!r}; {hint} {', '.join(named[name][:6])}, ...")
    if name == "nesterov" and not isinstance(value, bool):
        raise UsageError(f"{where}: nesterov is true or false, got {value!r}")
    if name == "hidden" and not (isinstance(value, list) and all(type(v) is int and v > 0 for v in value)):
        raise UsageError(f"{where}: hidden sizes are a list of positive integers such as [16, 16], got {value!r}")
    if name in RANGES and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise UsageError(f"{where}: a number is expected, got {value!r}")
    if name == "lr" and value <= 0 or name == "momentum" and not 0 <= value < 1:
        raise UsageError(f"{where}: {value} is out of range")


def sample(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """The trial's parameters (SGD where the space names no optimizer). Momentum only for an optimizer that takes
    it, Nesterov only with momentum."""

    def draw(name: str) -> Any:
        spec = space[name]
        if not isinstance(spec, dict):
            return spec
        if "choices" in spec:  # Optuna's choices are scalars: hidden sizes go as their JSON text
            value = trial.suggest_categorical(name, [json.dumps(c) if name == "hidden" else c for c in spec["choices"]])
            return json.loads(value) if name == "hidden" else value
        return trial.suggest_float(name, spec["low"], spec["high"], log=bool(spec.get("log")), step=spec.get("step"))

    params = {"optimizer": draw("optimizer") if "optimizer" in space else "SGD"}
    for name in ("lr", "hidden", "activation", "init"):
        if name in space:
            params[name] = draw(name)
    takes = optimizer_arguments(params["optimizer"])
    if "momentum" in space and "momentum" in takes:
        params["momentum"] = draw("momentum")
    if "nesterov" in space and "nesterov" in takes and params.get("momentum"):
        params["nesterov"] = draw("nesterov")
    return params


def optimizer_arguments(name: str) -> set[str]:
    import torch

    return set(inspect.signature(getattr(torch.optim, name)).parameters)


def plain_sgd(params: dict[str, Any]) -> bool:
    """Plain gradient descent: train.py's own SGD at --lr, which --seeds stacks (docs/usage.md)."""
    return params["optimizer"] == "SGD" and not params.get("momentum")


def trial_options(params: dict[str, Any]) -> list[str]:
    """train.py's options for a trial's parameters."""
    if plain_sgd(params):
        argv = ["--lr", repr(float(params["lr"]))] if "lr" in params else []
    else:
        argv = ["--optimizer", params["optimizer"]]
        for name in ("lr", "momentum"):
            if name in params:
                argv += [f"--optimizer.{name}", repr(float(params[name]))]
        if params.get("nesterov"):
            argv += ["--optimizer.nesterov", "true"]
    if "hidden" in params:
        argv += ["--mlp.hidden", json.dumps(params["hidden"])]
    for name in ("activation", "init"):
        if name in params:
            argv += [f"--mlp.{name}", params[name]]
    return argv


# --- a trial --------------------------------------------------------------------------------------------------


def pruning_callback(trial: Any) -> Any:
    """Optuna's PyTorchLightningPruningCallback, which the fast path understands, stopping the run where Optuna
    prunes it (the run then ends as with EarlyStopping: summary.json, last.ckpt) rather than failing it."""
    import optuna
    from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

    class PruneAtValidation(PyTorchLightningPruningCallback):
        def __init__(self) -> None:
            super().__init__(trial, monitor="val/acc")
            self.pruned_at: int | None = None

        def next_observed_epoch(self, trainer: Any, epoch: int) -> int | None:
            """For the fast path: the callback looks at validations only, at the end of every n-th epoch."""
            every = trainer.check_val_every_n_epoch
            return epoch if not every else -(-(epoch + 1) // every) * every - 1

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            try:
                super().on_validation_end(trainer, pl_module)
            except optuna.TrialPruned:
                self.pruned_at = pl_module.current_epoch + 1
                trainer.should_stop = True

    return PruneAtValidation()


class Surplus(Exception):
    """A trial beyond --trials, asked for at the same moment as another process's last one: failed untrained."""


def ahead_of(trial: Any) -> int:
    """The study's trials that count before this one: the finished ones, and those running that began earlier."""
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    return sum(
        t.state in finished or t.state == TrialState.RUNNING and t.number < trial.number
        for t in trial.study.get_trials(deepcopy=False)
    )


@dataclass
class Plan:
    """What every trial of this search shares."""

    space: dict[str, Any]
    fixed: list[str]  # train.py's options
    seed: int  # the first seed (train.py's --seed)
    seeds: int
    stackable: bool  # no --lr_scheduler: plain SGD's copies can be stacked
    prune: bool
    study: str
    url: str
    root: Path  # <default_root_dir>/search
    trials: int
    sampler_seed: int | None

    @property
    def study_dir(self) -> Path:
        return self.root / self.study


def objective(trial: Any, plan: Plan) -> float:
    """Train the trial's runs (its seeds stacked in one, or one a seed); its score is their mean val/acc."""
    import optuna

    from mlnet_lightning.cli import build_parser, parse
    from mlnet_lightning.models.base import TrainingDiverged
    from mlnet_lightning.runs import train_one

    trial.set_user_attr("process", [HOST, os.getpid()])  # one write: a running trial has both or neither
    if ahead_of(trial) >= plan.trials:  # another process asked for the last trial at the same time
        raise Surplus
    params = sample(trial, plan.space)
    stacked = plan.seeds > 1 and plan.stackable and plain_sgd(params)
    argv = [*plan.fixed, *trial_options(params), "--default_root_dir", str(plan.study_dir)]
    if stacked:
        runs = [[*argv, "--seeds", str(plan.seeds)]]
    else:
        runs = [[*argv, "--seed", str(plan.seed + i)] for i in range(plan.seeds)]
    scores: list[float] = []
    spread = 0.0
    for i, run in enumerate(runs):
        parser = build_parser()
        config, [(name, model_class)] = parse(parser, run)
        pruning = pruning_callback(trial) if plan.prune and i == 0 else None  # the first seed's run is watched
        try:
            summary = train_one(
                name, model_class, config, parser, f"trial_{trial.number}", callbacks=[pruning] if pruning else []
            )
        except TrainingDiverged as error:
            trial.set_user_attr("diverged", str(error))
            raise optuna.TrialPruned(f"diverged: {error}") from None
        if i == 0:
            run_dir = max((plan.study_dir / f"trial_{trial.number}").glob("version_*"), key=lambda d: int(d.name[8:]))
            trial.set_user_attr("folder", str(run_dir.resolve()))
            trial.set_user_attr("config", (run_dir / "config.yaml").read_text())
            trial.set_user_attr("epochs", summary["epochs"])
        if stacked:
            accuracy = summary["distribution"][0]["val_acc"]
            scores, spread = [accuracy["mean"]], accuracy["std"]
        else:
            scores.append(summary["val_acc"])
            spread = statistics.pstdev(scores)
        if pruning is not None and pruning.pruned_at is not None:
            trial.set_user_attr("val_acc_std", spread)
            raise optuna.TrialPruned(f"pruned at epoch {pruning.pruned_at}")
    trial.set_user_attr("val_acc_std", spread)
    return statistics.fmean(scores)


# --- storage, study and workers -------------------------------------------------------------------------------


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at `url`; a URL it cannot open or reach is bad input."""
    import optuna

    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # processes take turns at SQLite's lock
    elif url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}
    for attempt in range(5):
        try:
            # Heartbeats: a trial whose process died elsewhere is failed by another worker after the grace period.
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=10, grace_period=60)
        except Exception as error:  # SQLAlchemy's and the drivers' errors: a URL it cannot parse, a server not there
            reason = " ".join(str(error).split()).partition(" (Background on this error")[0] or type(error).__name__
            racing = "UNIQUE constraint" in reason or "already exists" in reason  # processes making its tables at once
            if not racing or attempt == 4:
                raise UsageError(f"--storage {url}: cannot open it: {reason[:300]}") from None
            time.sleep(0.2 * (attempt + 1))


def identity(space: dict[str, Any], config: Any, seeds: int) -> dict[str, Any]:
    """What a study's trials must share to be compared: the space, the seeds, train.py's training options."""
    options = {k: v for k, v in config.as_dict().items() if k not in OUTPUT_OPTIONS}
    return json.loads(json.dumps({"space": space, "seeds": seeds, "options": options}, default=str))


def check_same_search(study: Any, wanted: dict[str, Any], url: str) -> None:
    """Refuse to add trials of another space, other --seeds or other training options to a study."""
    found = study.user_attrs.get("search")
    if found is None or found == wanted:
        return

    def flat(search: dict[str, Any]) -> dict[str, Any]:
        return {
            "space": search["space"],
            "--seeds": search["seeds"],
            **{f"--{k}": v for k, v in search["options"].items()},
        }

    was, now = flat(found), flat(wanted)
    key = next(k for k in [*now, *was] if was.get(k) != now.get(k))
    raise UsageError(
        f"study {study.study_name!r} in {url} searched another {key} ({json.dumps(was.get(key))}, not "
        f"{json.dumps(now.get(key))}): give the same, or a new --study"
    )


def counts(study: Any) -> tuple[int, int]:
    """The study's finished (complete or pruned) and running trials."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states), states.count(TrialState.RUNNING)


def fail_dead_trials(study: Any, storage: Any) -> None:
    """Fail the running trials of processes of this machine that are gone (killed): at once, where Optuna's
    heartbeat would wait for its grace period (as it does for processes on other machines)."""
    import optuna
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = trial.user_attrs.get("process", (None, 0))
        if host == HOST and not alive(pid):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another process failed it first
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    optuna.storages.fail_stale_trials(study)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return not sys.platform.startswith("linux")  # elsewhere: left to the heartbeat
    return state not in ("Z", "X")


class Stop:
    """Ctrl-C, SIGTERM or a parent's request, outside a fit: the search ends before its next trial (in a fit the
    run's own handler stops it at an epoch's end, with its checkpoint)."""

    signum = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum

    def listen(self) -> None:
        from mlnet_lightning.signals import PARENT_ASKS, take_signals

        take_signals({signal.SIGINT: self, signal.SIGTERM: self, PARENT_ASKS: self})


def work(plan: Plan, stop: Stop, worker: int = 0) -> None:
    """Run trials until the study holds plan.trials finished ones (those running elsewhere count until they end)."""
    import numpy as np
    import optuna

    from mlnet_lightning.callbacks import RunInterrupted

    storage = open_storage(plan.url)
    study = optuna.load_study(study_name=plan.study, storage=storage)
    seed = plan.sampler_seed
    if seed is not None:  # another stream for each worker and each resume: no trial drawn twice
        seed = int(np.random.SeedSequence([seed, worker, len(study.trials)]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    study.pruner = optuna.pruners.MedianPruner() if plan.prune else optuna.pruners.NopPruner()
    while not stop.signum:
        fail_dead_trials(study, storage)
        finished, running = counts(study)
        if finished >= plan.trials:
            return
        if finished + running >= plan.trials:  # the last trials run elsewhere: wait for them
            time.sleep(1)
            continue
        try:
            study.optimize(
                lambda trial: objective(trial, plan),
                n_trials=1,
                catch=(Surplus,),
                gc_after_trial=False,
                callbacks=[said],
            )
        except RunInterrupted as interrupted:  # stopped in a fit: its trial failed, to be drawn anew
            stop.signum = stop.signum or interrupted.signum


def said(study: Any, trial: Any) -> None:
    """One line on stderr as each trial ends."""
    if "epochs" in trial.user_attrs or trial.state.name == "PRUNED":  # not a surplus trial
        print(describe_trial(trial), file=sys.stderr, flush=True)


def describe_trial(trial: Any) -> str:
    score = trial.value
    if score is None and trial.last_step is not None:
        score = trial.intermediate_values[trial.last_step]
    acc = f"val/acc {score:.4f}" if score is not None else "no val/acc"
    seconds = trial.duration.total_seconds() if trial.duration else 0
    state = trial.state.name.lower()
    return (
        f"search.py: trial {trial.number} {state}: {acc}, {trial.user_attrs.get('epochs', 0)} epochs, {seconds:.1f} s"
    )


def worker_main(plan: Plan, worker: int, parent: int) -> None:
    """A worker process (forked): its trials one at a time on one CPU thread, until the study has its trials."""
    import torch

    from mlnet_lightning.cli import print_error
    from mlnet_lightning.parallel import _stop_with_parent
    from mlnet_lightning.signals import STOP_SIGNALS, exit_status

    stop = Stop()
    stop.listen()
    _stop_with_parent(parent)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent while it forked
    torch.set_num_threads(1)
    try:
        work(plan, stop, worker)
    except Exception as error:  # noqa: BLE001 - the worker's one line; the parent fails the command
        print_error("search.py", error)
        raise SystemExit(1) from None
    raise SystemExit(exit_status(stop.signum) if stop.signum else 0)


def run_workers(plan: Plan, jobs: int, stop: Stop) -> None:
    """`jobs` forked worker processes on the study; a stop request is passed on to them, and waited for."""
    from mlnet_lightning.parallel import WorkerDied
    from mlnet_lightning.signals import PARENT_ASKS, STOP_SIGNALS

    context = multiprocessing.get_context("fork")
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # a worker takes them with its own handlers
    try:
        workers = [context.Process(target=worker_main, args=(plan, i, os.getpid())) for i in range(jobs)]
        for worker in workers:
            worker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    told = 0
    while any(w.is_alive() for w in workers):
        if stop.signum and not told:
            told = 1
            for worker in workers:
                if worker.is_alive():
                    os.kill(worker.pid, PARENT_ASKS)
        time.sleep(0.1)
    failed = [w.exitcode for w in workers if w.exitcode != 0]
    if failed and not stop.signum:
        raise WorkerDied(f"a search worker process ended with status {failed[0]}; the same command resumes the study")


# --- the command ----------------------------------------------------------------------------------------------


def given(argv: list[str], option: str) -> bool:
    return any(arg.partition("=")[0] == option or arg.startswith(option + ".") for arg in argv)


def check_fixed(rest: list[str], space: dict[str, Any]) -> None:
    """Refuse train.py options that the space or the search sets for each trial."""
    for option in ("--seeds", "--lrs", "--ckpt_path"):
        if given(rest, option):
            raise UsageError(f"{option}: the search sets it for each trial (search.py --help, docs/search.md)")
    sets = {"--optimizer": OPTIMIZER_PARAMETERS, "--lr": OPTIMIZER_PARAMETERS}
    sets |= {f"--mlp.{name}": (name,) for name in MLP_PARAMETERS}
    for option, parameters in sets.items():
        if given(rest, option) and set(parameters) & set(space):
            raise UsageError(f"{option}: the space sets it for each trial; change it in the space file")


def search(argv: list[str]) -> str:
    import optuna
    import torch

    from mlnet_lightning.cli import build_parser, parse, prepare

    options, rest = search_parser().parse_known_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the trials' lines and the table say it all
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, plots
    for name in ("trials", "seeds", "top", "jobs"):
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise UsageError(f"--{name} takes a positive integer, got {getattr(options, name)}")
    prepare()
    space = read_space(options.space)
    check_fixed(rest, space)
    fixed = ["--model", "mlp", "--enable_progress_bar", "false", "--pictures", "false", *rest]
    config, models = parse(build_parser(), fixed)
    if len(models) != 1:
        raise UsageError("--model all: a search trains one network (--model mlp, the default)")
    if set(MLP_PARAMETERS) & set(space) and models[0][0] != "mlp":
        raise UsageError(f"--model {config.model}: the space sets hidden, activation or init, which are mlp's")
    data = config.data.class_path.rpartition(".")[2]
    study_name = options.study or f"{models[0][0]}_{data}"
    if not study_name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise UsageError(f"--study {study_name!r}: letters, digits, _, - and . only (it names a folder)")
    root = Path(config.default_root_dir) / "search"
    url = options.storage or f"sqlite:///{(root / f'{study_name}.db').absolute()}"
    wanted = identity(space, config, options.seeds)
    storage = None
    if options.storage or (root / f"{study_name}.db").exists():  # checked before anything is written
        storage = open_storage(url)
        with contextlib.suppress(KeyError):  # a new study
            check_same_search(optuna.load_study(study_name=study_name, storage=storage), wanted, url)
    root.mkdir(parents=True, exist_ok=True)
    storage = storage or open_storage(url)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True)
    check_same_search(study, wanted, url)  # another process may have created it meanwhile
    if "search" not in study.user_attrs:
        study.set_user_attr("search", wanted)
    plan = Plan(
        space=space, fixed=fixed, seed=config.seed, seeds=options.seeds, stackable=config.lr_scheduler is None,
        prune=options.prune == "true", study=study_name, url=url, root=root, trials=options.trials,
        sampler_seed=options.sampler_seed,
    )  # fmt: skip
    finished, _ = counts(study)
    print(f"search.py: study {study_name!r} in {url}: {finished} of {options.trials} trials done", file=sys.stderr)
    on_cpu = config.accelerator == "cpu" or (config.accelerator == "auto" and not torch.cuda.is_available())
    jobs = min(options.jobs or (len(os.sched_getaffinity(0)) if on_cpu else 1), max(options.trials - finished, 1))
    stop = Stop()
    stop.listen()
    started = time.monotonic()
    if jobs == 1:
        work(plan, stop)
    else:
        storage.remove_session()
        run_workers(plan, jobs, stop)
    if stop.signum:
        raise SearchStopped(stop.signum)
    ran = counts(study)[0] - finished
    return report(
        optuna.load_study(study_name=study_name, storage=storage), plan, options.top, ran, time.monotonic() - started
    )


# --- the report -----------------------------------------------------------------------------------------------


def report(study: Any, plan: Plan, top: int, ran: int, wall: float) -> str:
    """The table of the best trials, the best one's config, the plots."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    best = sorted(complete, key=lambda t: (-t.value, t.number))[:top]
    varied = [name for name, spec in plan.space.items() if isinstance(spec, dict)]
    header = ["trial", "val_acc", "std", "epochs", "seconds", *varied]
    rows = [header]
    for t in best:
        values = [t.params.get(name, "-") for name in varied]
        std, epochs, seconds = (
            t.user_attrs.get("val_acc_std", 0),
            t.user_attrs.get("epochs"),
            t.duration.total_seconds(),
        )
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
        rows.append([str(t.number), f"{t.value:.4f}", f"{std:.4f}", str(epochs), f"{seconds:.1f}", *cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(
        f"study {study.study_name}: {len(complete) + pruned} trials ({len(complete)} complete, {pruned} pruned); "
        f"this command: {ran} in {wall:.1f} s, {ran / max(wall, 1e-9) * 60:.1f} a minute"
    )
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    if best:
        lines.append(f"best: trial {best[0].number}, rerun: train.py --config {write_best(best[0], plan)}")
    lines += plots(study, plan.study_dir, len(complete))
    return "\n".join(lines)


def write_best(trial: Any, plan: Plan) -> Path:
    """The best trial's config.yaml, its runs going under the search's own --default_root_dir."""
    from mlnet_lightning.files import write_text

    config = yaml.safe_load(trial.user_attrs["config"])
    config["default_root_dir"] = str(plan.root.parent)
    config.pop("enable_progress_bar")  # train.py's own default: the bar
    std = trial.user_attrs.get("val_acc_std", 0)
    head = (
        f"# study {plan.study}, trial {trial.number}: val acc {trial.value:.4f} (std {std:.4f}, {plan.seeds} seeds)\n"
    )
    path = plan.study_dir / "best.yaml"
    write_text(path, head + yaml.safe_dump(config, sort_keys=False))
    return path


def plots(study: Any, folder: Path, complete: int) -> list[str]:
    """Optuna's optimization history and parameter importances, as PNG files and TensorBoard images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plot
    from torch.utils.tensorboard import SummaryWriter

    if complete < 2:
        return ["plots: none until 2 trials are complete"]
    written = []
    writer = SummaryWriter(str(folder / "plots"))
    for name, draw in (("history", plot.plot_optimization_history), ("importances", plot.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a choice drawn once: "the importance may be inaccurate"
                figure = draw(study).figure
        except (RuntimeError, ValueError, ZeroDivisionError):  # importances of parameters that never varied
            continue
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(folder / f"{name}.png", dpi=100)
        writer.add_figure(f"search/{name}", figure, global_step=complete)
        plt.close(figure)
        written.append(str(folder / f"{name}.png"))
    writer.close()
    return [f"plots: {', '.join(written)} (and TensorBoard's IMAGES: tensorboard --logdir {folder})"]


def main(argv: list[str] | None = None) -> int:
    """search.py: exit status 0 done, 2 bad input, 1 a failed write or worker, 130 or 143 stopped (resumable)."""
    from mlnet_lightning.cli import run_training
    from mlnet_lightning.signals import describe, exit_status

    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_training("search.py", lambda runs: search(argv))
    except SearchStopped as stopped:
        print(f"search.py: stopped by {describe(stopped.signum)}; the same command resumes the study", file=sys.stderr)
        return exit_status(stopped.signum)


if __name__ == "__main__":
    sys.exit(main())
