"""Every private attribute of torch, Lightning and TensorBoard that the project reads or writes, in one place.

Lightning has no public way to say "these epochs were trained elsewhere", nor to ask a ModelCheckpoint
or EarlyStopping when it will next act, nor to tell how far a checkpoint's epoch had got; torch none to list
the Python hooks a module or an optimizer would run, nor to see operators below autograd outside
`torch.utils._python_dispatch`; TensorBoard none to append encoded events to a logger's file. Each use is
pinned against the installed versions by the tests (tests/test_internals.py for Lightning's loop state,
tests/test_replay.py for the tape, tests/test_lightning_native.py for the events), and the fast path, whose
numbers depend on them, runs only on the versions those tests ran on (`TESTED`): elsewhere it steps aside
with one warning, and Lightning trains every epoch.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from collections.abc import Sequence
from functools import cache
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.nn.modules import module as nn_module
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: F401 (the tape's recorder derives from it)

# The versions (major.minor) the tests pinned the private uses below against; pyproject.toml says the same.
TESTED = {"torch": "2.13", "lightning": "2.6", "tensorboard": "2.21"}


class UntestedVersion(UserWarning):
    """The fast path steps aside: an installed version is not one its private uses were tested on."""


def untested_versions() -> list[str]:
    """The installed packages whose major.minor version differs from the tested one, as `name version`."""
    return [
        f"{name} {installed}"
        for name, tested in TESTED.items()
        if ".".join((installed := importlib.metadata.version(name)).split("+")[0].split(".")[:2]) != tested
    ]


# Set to 1 to run the fast path on untested versions anyway: to test a new version before TESTED names it.
TRY_UNTESTED = "MLNET_FAST_PATH_ON_UNTESTED_VERSIONS"


@cache
def versions_tested() -> bool:
    """Whether the fast path may run here; warns once where it may not."""
    untested = [] if os.environ.get(TRY_UNTESTED) == "1" else untested_versions()
    if untested:
        pinned = ", ".join(f"{name} {version}" for name, version in TESTED.items())
        warnings.warn(
            f"the fast path steps aside (Lightning trains every epoch, the same numbers): it was tested with "
            f"{pinned}, and {', '.join(untested)} is installed",
            UntestedVersion,
            stacklevel=2,
        )
    return not untested


def count_epochs_trained(trainer: L.Trainer, epochs: int, batches: int, scheduler_steps: int) -> None:
    """Move every counter Lightning keeps on by `epochs` epochs of `batches` batches in all (an optimizer step
    each) and `scheduler_steps` learning-rate scheduler steps, as if its loop had run them. The counters of the
    current epoch's batches are left: Lightning resets them as the next epoch starts (at whose first step or
    whose `on_train_epoch_start` the bulk runs)."""
    fit_loop = trainer.fit_loop
    epoch_loop = fit_loop.epoch_loop
    for tracker, count in (
        (fit_loop.epoch_progress.total, epochs),
        (fit_loop.epoch_progress.current, epochs),
        (epoch_loop.batch_progress.total, batches),
    ):
        tracker.ready += count
        tracker.started += count
        tracker.processed += count
        tracker.completed += count
    epoch_loop._batches_that_stepped += batches
    if trainer.lightning_module.automatic_optimization:
        optimizer = epoch_loop.automatic_optimization.optim_progress.optimizer
        optimizer.step.total.ready += batches
        optimizer.step.total.completed += batches
        optimizer.zero_grad.total.ready += batches
        optimizer.zero_grad.total.started += batches
        optimizer.zero_grad.total.completed += batches
    else:  # a manual optimization's counters are never reset by epoch: "current" counts all steps too
        progress = epoch_loop.manual_optimization.optim_step_progress
        for steps in (progress.total, progress.current):
            steps.ready += batches
            steps.completed += batches
    epoch_loop.scheduler_progress.total.ready += scheduler_steps
    epoch_loop.scheduler_progress.total.completed += scheduler_steps


def keep_epoch_end_metrics(trainer: L.Trainer, metrics: dict[str, Tensor]) -> None:
    """Leave `metrics` (an epoch's values, logged with self.log's defaults: to the loggers, not the progress
    bar) in `trainer.callback_metrics` and `trainer.logged_metrics`, as Lightning's epoch-end logging would:
    a callback's `on_train_epoch_end` runs before the module's, so it sees the previous epoch's values of
    what the module logs there."""
    connector = trainer._logger_connector
    connector._callback_metrics.update(metrics)
    connector._logged_metrics.update(metrics)


def logger_step(trainer: L.Trainer) -> int:
    """The step at which Lightning logs the current epoch's end: the batches that have stepped before it."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def checkpoint_every_n_epochs(callback: ModelCheckpoint, trainer: L.Trainer) -> int | None:
    """Epochs between a ModelCheckpoint's saves at the ends of training epochs: 0 when it saves only after
    validations (then at validation epochs alone), None when it saves on steps or time instead."""
    if callback._every_n_train_steps or callback._train_time_interval is not None:
        return None
    return callback._every_n_epochs if callback._should_save_on_train_epoch_end(trainer) else 0


def checks_every_train_epoch(callback: EarlyStopping) -> bool:
    """Whether an EarlyStopping checks its metric at the end of every training epoch (rather than after
    each validation)."""
    return bool(callback._check_on_train_epoch_end)


def epochs_in_checkpoint(checkpoint: dict[str, Any]) -> int:
    """The epochs whose training a checkpoint holds. `epoch` counts the epochs ended; a checkpoint written
    in an epoch's hooks after its last batch (at a validation) also holds the training of that epoch."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs = loop.get("epoch_progress", {}).get("current", {})
    under_way = epochs.get("started", 0) > epochs.get("completed", 0)
    trained_through = loop.get("epoch_loop.batch_progress", {}).get("is_last_batch", False)
    return int(checkpoint["epoch"]) + (under_way and trained_through)


def runs_python_hooks(module: torch.nn.Module) -> bool:
    """Whether an epoch would call Python hooks that a replay would not: the modules' forward and backward
    hooks (their own or torch's global ones) and the gradient hooks of their tensors. No public API lists
    them; these are the attributes `register_*_hook` fills."""
    tables = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
    if any(getattr(nn_module, f"_global{table}") for table in tables):
        return True
    if any(getattr(submodule, table) for submodule in module.modules() for table in tables):
        return True
    return any(t._backward_hooks or t._post_accumulate_grad_hooks for t in (*module.parameters(), *module.buffers()))


def has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether Python hooks run around `optimizer`'s steps (its own or torch's global ones)."""
    hooks = (optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks)
    return any(hooks) or bool(_global_optimizer_pre_hooks or _global_optimizer_post_hooks)


def add_in_place(tensors: Sequence[Tensor], others: Sequence[Tensor], alpha: float) -> None:
    """tensors[i] += alpha * others[i], one foreach kernel for all: what torch.optim.SGD's foreach step runs."""
    torch._foreach_add_(list(tensors), list(others), alpha=alpha)


def operator_of(overload: torch._ops.OpOverload) -> Any:
    """The C++ operator an OpOverload calls: OpOverload's Python __call__ costs a frame a call."""
    return overload._op


def unprefixed(logger: TensorBoardLogger) -> bool:
    """Whether a TensorBoardLogger logs its metrics under their own names (no `prefix=`)."""
    return not logger._prefix


def tensorboard_event_files(logger: TensorBoardLogger) -> tuple[Any, Any]:
    """The logger's event writer (queued, with a writer thread) and the record writer under it."""
    event_writer = logger.experiment._get_file_writer().event_writer
    return event_writer, event_writer._general_file_writer


class ClaimedVersions(TensorBoardLogger):
    """A TensorBoardLogger whose next version number goes through `claim(version)` (which returns the number
    taken): TensorBoardLogger finds it in its private `_get_next_version` (pinned by tests/test_faults.py's
    atomic claims)."""

    def claim(self, version: int) -> int:
        return version

    def _get_next_version(self) -> int:
        return self.claim(super()._get_next_version())
