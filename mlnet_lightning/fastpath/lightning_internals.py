"""The little of Lightning's private state that the project reads and writes, in one place.

Lightning has no public way to say "these epochs were trained elsewhere", nor to ask a ModelCheckpoint
or EarlyStopping when it will next act, nor to tell how far a checkpoint's epoch had got.
tests/test_lightning_internals.py pins the fast path's lines against the installed Lightning: a fit
whose epochs were trained in bulk ends with the same loop state, counter for counter, as the same fit
trained epoch by epoch; tests/test_faults.py resumes from checkpoints taken at each point of an epoch.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import Tensor


def count_epochs_trained(trainer: L.Trainer, epochs: int, scheduler_steps: int) -> None:
    """Move every counter Lightning keeps on by `epochs` full-batch epochs (one batch and one optimizer
    step each) and `scheduler_steps` learning-rate scheduler steps, as if its loop had run them."""
    fit_loop = trainer.fit_loop
    epoch_loop = fit_loop.epoch_loop
    for tracker in (fit_loop.epoch_progress.total, fit_loop.epoch_progress.current, epoch_loop.batch_progress.total):
        tracker.ready += epochs
        tracker.started += epochs
        tracker.processed += epochs
        tracker.completed += epochs
    epoch_loop._batches_that_stepped += epochs
    if trainer.lightning_module.automatic_optimization:
        optimizer = epoch_loop.automatic_optimization.optim_progress.optimizer
        optimizer.step.total.ready += epochs
        optimizer.step.total.completed += epochs
        optimizer.zero_grad.total.ready += epochs
        optimizer.zero_grad.total.started += epochs
        optimizer.zero_grad.total.completed += epochs
    else:  # a manual optimization's counters are never reset by epoch: "current" counts all steps too
        progress = epoch_loop.manual_optimization.optim_step_progress
        for steps in (progress.total, progress.current):
            steps.ready += epochs
            steps.completed += epochs
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
