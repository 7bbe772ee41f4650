"""Epochs that nothing observes, trained in bulk at the start of an epoch's step: when, and how."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    Timer,
)
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor

from mlnet_lightning.fastpath.events import log_points
from mlnet_lightning.fastpath.replay import TrainingState, replayed_epochs
from mlnet_lightning.fastpath.updates import plain_update
from mlnet_lightning.internals import (
    checkpoint_every_n_epochs,
    checks_every_train_epoch,
    count_epochs_trained,
    keep_epoch_end_metrics,
    logger_step,
    versions_tested,
)

# Hooks of a module or data module that would see each epoch's batch (the bulk reuses the one Lightning gave).
BATCH_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
# Hooks that would run for every epoch or step: a module may not override them beyond its fast class's
# own, and a callback that overrides them observes every epoch.
MODULE_HOOKS = (
    "training_step", "on_train_batch_start", "on_train_batch_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step", "optimizer_step",
    "on_before_zero_grad", "optimizer_zero_grad", "configure_gradient_clipping", "lr_scheduler_step",
    "manual_backward", "log", "log_dict", *BATCH_HOOKS,
)  # fmt: skip
CALLBACK_HOOKS = (
    "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
)  # fmt: skip
# Callbacks whose epoch hooks change nothing for epochs they do not see: progress bars draw, a
# summary prints at the start, a Timer's deadline is checked epoch by epoch below.
BLIND_CALLBACKS = (ProgressBar, ModelSummary, Timer)
# Code the fast path knows: Lightning's callbacks and the project's own networks and callbacks, each tested
# with the fast path on and off.
UNDERSTOOD_PACKAGES = ("lightning.", "pytorch_lightning.", "mlnet_lightning.")
# Epochs trained in one bulk at most when nothing observes sooner: the loggers get their points at least
# that often.
MAX_BULK = 1000
# The last seconds before `max_time` are Lightning's own epochs, so that its Timer ends the run after the
# very epoch it would (a bulk could only notice the deadline after an epoch that crossed it).
DEADLINE_MARGIN_S = 1.0
# A step's loss (detached) and the values its `step` gave.
StepRecord = tuple[Tensor, dict[str, Tensor]]


def fast_forward(module: L.LightningModule, batch: tuple[Tensor, Tensor] | None) -> int:
    """Train the unobserved epochs that start at the current one; returns how many.

    Full-batch epochs are trained at the start of the epoch's step, from its `batch`; mini-batch epochs of
    the project's loader (`batch` None) at the start of the epoch, before Lightning cuts its batches: they are
    cut after `on_train_epoch_start`, so its own epoch after the bulk comes in that epoch's order.

    Whatever stops it (Ctrl-C, an exception, a failed write) finds Lightning's counters and the weights
    agreeing: an exception puts the weights back as they were before the bulk, and Ctrl-C ends the bulk
    after its epoch, the counters moved on, and is raised then."""
    trainer = module.trainer
    ahead = unobserved_epochs(trainer, module, mini_batches=batch is None)
    if ahead == 0:
        return 0
    optimizer = trainer.optimizers[0]
    before = TrainingState(module, optimizer, [config.scheduler for config in trainer.lr_scheduler_configs])
    with interrupt_deferred() as interrupted:
        try:
            trained = train_in_bulk(module, batch, ahead, interrupted)
        except BaseException:
            before.restore()
            raise
    if interrupted():
        raise KeyboardInterrupt
    return trained


def train_in_bulk(
    module: L.LightningModule, batch: tuple[Tensor, Tensor] | None, ahead: int, interrupted: Callable[[], bool]
) -> int:
    """Train up to `ahead` epochs (mini-batch ones where `batch` is None), log their points and count them in
    Lightning's loop."""
    trainer = module.trainer
    optimizer = trainer.optimizers[0]
    update = plain_update(module, optimizer)
    stopping = stop_condition(trainer, interrupted)
    if module.automatic_optimization:
        optimizer.zero_grad()  # as Lightning does before a step's backward: the last step left its gradients
    first_epoch, first_step = trainer.current_epoch, logger_step(trainer)
    # The context Lightning's training_step runs in (64-true: float64 as the default dtype).
    with trainer.precision_plugin.train_step_context():
        if batch is None:
            loader = trainer.train_dataloader
            # The conversions Lightning makes of each batch, made once: cut before or after, the same numbers.
            x, y = trainer.strategy.batch_to_device(trainer.precision_plugin.convert_input((loader.x, loader.y)))
            records = train_eagerly(module, partial(epoch_batches, loader, x, y), update, ahead, stopping)
            sizes = [len(part) for part in y.split(loader.batch_size)]  # TensorBatches' cuts: the last may be smaller
        else:
            x, y = batch
            sizes = [len(y)]
            replayer = replayed_epochs(module, optimizer, x, y)  # the epochs replayed from one captured epoch
            if replayer is not None:
                step = partial(step_on, module, x, y, update)
                records = [[record] for record in replayer.train(step, module, optimizer, x, y, ahead, stopping)]
            else:
                records = train_eagerly(module, lambda epoch: [batch], update, ahead, stopping)
        points = logged_points(module, records, sizes, first_epoch) if records else {}
    trained = len(records)
    if not trained:
        return 0
    batches = len(sizes)
    columns = {name: values.tolist() for name, values in points.items()}
    columns["epoch"] = list(range(first_epoch, first_epoch + trained))  # as Lightning adds it
    if not trainer.barebones:  # where Lightning's self.log logs nothing
        # Lightning logs an epoch's end at the step of its last batch.
        log_points(trainer.loggers, range(first_step + batches - 1, first_step + trained * batches, batches), columns)
        for logger in trainer.loggers:
            logger.save()
        keep_epoch_end_metrics(trainer, {name: values[-1].clone() for name, values in points.items()})
    module.epoch_steps = [(values, size) for (_, values), size in zip(records[-1], sizes)]
    configs = trainer.lr_scheduler_configs
    per_epoch = sum(batches if config.interval == "step" else 1 for config in configs)
    count_epochs_trained(trainer, trained, trained * batches, trained * per_epoch)
    return trained


def step_on(module: L.LightningModule, x: Tensor, y: Tensor, update: Callable[[], None]) -> StepRecord:
    """One training step on a batch, as the module's training_step takes it, without Lightning's hooks:
    `update` is its optimizer's step. Returns the loss and the step's values."""
    loss, values = module.step(x, y)
    loss.backward()
    update()
    return loss.detach(), values


def train_eagerly(
    module: L.LightningModule,
    batches_of: Callable[[int], list[tuple[Tensor, Tensor]]],
    update: Callable[[], None],
    ahead: int,
    stopping: Callable[[], bool],
) -> list[list[StepRecord]]:
    """Up to `ahead` epochs of the batches `batches_of(epoch)`, stepped as Lightning's loop steps them: the
    `interval="step"` schedulers after each batch, then the others after the epoch's last. Returns each
    epoch's steps' records."""
    trainer = module.trainer
    configs = trainer.lr_scheduler_configs
    per_step = [config.scheduler for config in configs if config.interval == "step"]
    per_epoch = [config.scheduler for config in configs if config.interval == "epoch"]
    records = []
    for epoch in range(trainer.current_epoch, trainer.current_epoch + ahead):
        if stopping():
            break
        epoch_records = []
        for x, y in batches_of(epoch):
            epoch_records.append(step_on(module, x, y, update))
            for scheduler in per_step:
                scheduler.step()
        for scheduler in per_epoch:
            scheduler.step()
        records.append(epoch_records)
    return records


def logged_points(
    module: L.LightningModule, records: list[list[StepRecord]], sizes: list[int], first_epoch: int
) -> dict[str, Tensor]:
    """What the module's training_step gives Lightning's epoch-end logging for the epochs trained (one
    point an epoch by name): the module's `logged` values of each step, averaged as self.log averages
    them. Raises at the first non-finite loss, as training_step would."""
    from mlnet_lightning.models.base import check_finite, weighted_mean  # not at the top: the models import this

    losses = torch.stack([loss for epoch in records for loss, _ in epoch]).view(len(records), len(sizes))
    # Each epoch's first non-finite loss (its first loss when none), as training_step would stop at it.
    first_bad = torch.isfinite(losses).logical_not().int().argmax(-1, keepdim=True)
    check_finite(losses.gather(-1, first_bad).squeeze(-1), first_epoch)
    names = records[0][0][1]
    values = {name: torch.stack([torch.stack([v[name] for _, v in epoch]) for epoch in records]) for name in names}
    # (epochs, batches) a name, the batches last as weighted_mean takes them
    logged = module.logged(values)
    return {name: weighted_mean(steps, sizes) for name, steps in logged.items()}


def epoch_batches(loader, x: Tensor, y: Tensor, epoch: int) -> list[tuple[Tensor, Tensor]]:
    """The batches of (x, y) that the TensorBatches `loader` yields in `epoch`, cut by its own code: its
    `epoch()` reads the epoch Lightning is at, which a bulk moves only once it ends."""
    shuffled = loader.epoch is not None
    return list(type(loader)(x, y, loader.batch_size, loader.seed, epoch=(lambda: epoch) if shuffled else None))


def unobserved_epochs(trainer: L.Trainer, module: L.LightningModule, mini_batches: bool) -> int:
    """How many epochs, from the current one on, nothing would observe; 0 where the fast path cannot
    vouch for that."""
    if not can_train_in_bulk(trainer, module, mini_batches):
        return 0
    epoch = trainer.current_epoch
    observed = [next_observed_by(callback, trainer, epoch) for callback in trainer.callbacks]
    observed.append(epoch + MAX_BULK - 1)
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        observed.append(trainer.max_epochs - 1)
    if trainer.max_steps >= 0:
        steps = trainer.num_training_batches  # an optimizer step a batch: no accumulation
        observed.append(epoch + -(-(trainer.max_steps - trainer.global_step) // steps) - 1)
    if trainer.enable_validation:
        every = trainer.check_val_every_n_epoch
        observed.append(epoch if every is None else next_multiple(epoch, every))
    return max(0, min(e for e in observed if e is not None) - epoch)


def next_multiple(epoch: int, every: int) -> int:
    """The first epoch from `epoch` on that ends a period of `every` epochs (counting from 0)."""
    return -(-(epoch + 1) // every) * every - 1


def next_observed_by(callback: Callback, trainer: L.Trainer, epoch: int) -> int | None:
    """The first epoch from `epoch` on whose training a callback would see; None if none.

    Lightning's callbacks and the project's are understood; an epoch, batch or optimizer hook of one's own
    (on the instance, as LambdaCallback's, or in a class, a subclass of Lightning's included) observes every
    epoch, unless its class says when by defining `next_observed_epoch(trainer, epoch)`."""
    if any(name in vars(callback) for name in CALLBACK_HOOKS):
        return epoch
    for cls in type(callback).__mro__:
        if cls.__module__.startswith(UNDERSTOOD_PACKAGES):
            break
        if "next_observed_epoch" in vars(cls):
            return callback.next_observed_epoch(trainer, epoch)
        if any(name in vars(cls) for name in CALLBACK_HOOKS):
            return epoch
    if hasattr(callback, "next_observed_epoch"):
        return callback.next_observed_epoch(trainer, epoch)
    if isinstance(callback, ModelCheckpoint):
        every = checkpoint_every_n_epochs(callback, trainer)
        return epoch if every is None else next_multiple(epoch, every) if every > 0 else None  # 0: at validations
    if isinstance(callback, EarlyStopping):
        return epoch if checks_every_train_epoch(callback) else None  # else after validations
    if isinstance(callback, BLIND_CALLBACKS):
        return None
    overridden = [name for name in CALLBACK_HOOKS if getattr(type(callback), name) is not getattr(Callback, name)]
    return epoch if overridden else None


def vouched_for(module: L.LightningModule) -> bool:
    """Whether every class of the module's own is one the fast path knows (the project's networks), or says
    that its code computes each epoch the same, whatever the epoch, the step or any Python value
    (`fast_path = True` in its class body): a loss reading `current_epoch` would be frozen in a bulk."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith(UNDERSTOOD_PACKAGES):
            return True
        if vars(cls).get("fast_path") is not True:
            return False
    return False


def can_train_in_bulk(trainer: L.Trainer, module: L.LightningModule, mini_batches: bool) -> bool:
    """Whether this fit's steps are exactly what `step_on` does with the module's `step`, epoch after epoch:
    on the full batch, or on every mini-batch of the project's loader (`mini_batches`)."""
    from mlnet_lightning.models.base import SteppedModule  # not at the top: the models import this

    if not (isinstance(module, SteppedModule) and module.fast_path and vouched_for(module)) or not versions_tested():
        return False
    overridden = (getattr(type(module), name) is not getattr(SteppedModule, name) for name in MODULE_HOOKS)
    if any(overridden) or any(name in vars(module) for name in MODULE_HOOKS):  # in a class, or on the instance
        return False
    data = trainer.datamodule
    if data is not None and any(getattr(type(data), h) is not getattr(L.LightningDataModule, h) for h in BATCH_HOOKS):
        return False
    return (
        trainer.training
        and not trainer.sanity_checking
        and not trainer.should_stop
        and not trainer.received_sigterm
        and isinstance(trainer.strategy, SingleDeviceStrategy)  # one process, the module not wrapped
        and trainer.precision in ("32-true", "64-true")
        and (cuts_mini_batches(trainer) if mini_batches else cuts_full_batch(trainer))
        and len(trainer.optimizers) == 1
        and all(plain_schedule(config) for config in trainer.lr_scheduler_configs)
        and (
            not module.automatic_optimization
            or (trainer.accumulate_grad_batches == 1 and not trainer.gradient_clip_val)
        )
        and trainer.overfit_batches == 0
        and not trainer.fast_dev_run
        and trainer.reload_dataloaders_every_n_epochs == 0
        and isinstance(trainer.profiler, PassThroughProfiler)
    )


def cuts_full_batch(trainer: L.Trainer) -> bool:
    """Whether every epoch is the very same single batch."""
    return trainer.num_training_batches == 1 and getattr(trainer.train_dataloader, "full_batch", False)


def cuts_mini_batches(trainer: L.Trainer) -> bool:
    """Whether every epoch is all the mini-batches of the project's loader, cut by `epoch_batches` as it cuts
    them, from an epoch's start (a resumed epoch may have started before the checkpoint)."""
    from mlnet_lightning.data import TensorBatches  # not at the top: data imports this module (through seeds)

    loader = trainer.train_dataloader
    return (
        type(loader) is TensorBatches
        and not loader.full_batch
        and trainer.num_training_batches == len(loader)
        and not trainer.fit_loop.restarting
    )


def plain_schedule(config) -> bool:
    """A scheduler stepped once an epoch or once a step, with no metric to watch."""
    return config.frequency == 1 and not config.reduce_on_plateau and config.interval in ("epoch", "step")


def stop_condition(trainer: L.Trainer, interrupted: Callable[[], bool]) -> Callable[[], bool]:
    """What ends a bulk of epochs early, checked before each: a stop request (Ctrl-C, SIGTERM) or
    `max_time` drawing near (DEADLINE_MARGIN_S)."""
    timers = [callback for callback in trainer.callbacks if isinstance(callback, Timer)]
    timer = timers[0] if timers and timers[0].time_remaining() is not None else None

    def stopping() -> bool:
        near_deadline = timer is not None and timer.time_remaining() <= DEADLINE_MARGIN_S
        return trainer.should_stop or trainer.received_sigterm or interrupted() or near_deadline

    return stopping


@contextmanager
def interrupt_deferred() -> Iterator[Callable[[], bool]]:
    """Python's Ctrl-C (KeyboardInterrupt, raised wherever the main thread is) held back while it runs:
    the bulk stops after the epoch it is training, and raises it once Lightning's counters match the
    weights. A handler of one's own (train.py's, which asks the Trainer to stop) is left alone."""
    pressed: list[int] = []
    ours = threading.current_thread() is threading.main_thread()
    ours = ours and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield lambda: bool(pressed)
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)
