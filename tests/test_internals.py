"""mlnet_lightning.internals against the installed Lightning: epochs trained in bulk leave the loop
state that Lightning's own loop leaves, and the callbacks' settings are read as they were given."""

from __future__ import annotations

import copy
import warnings
from datetime import timedelta

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.types import OptimizerLRScheduler

from mlnet_lightning import internals
from mlnet_lightning.data import BlobData
from mlnet_lightning.internals import checkpoint_every_n_epochs, checks_every_train_epoch
from mlnet_lightning.models import Scratch, Sequential
from tests.test_lightning_native import assert_same, counting_bulk_epochs

QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
STEP_LR = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 7, "gamma": 0.5}}


class StepIntervalSchedule(Sequential):
    """A scheduler stepped after every optimizer step rather than every epoch."""

    fast_path = True  # opts in: the fast path's own checks are under test

    def configure_optimizers(self) -> OptimizerLRScheduler:
        config = super().configure_optimizers()
        return {**config, "lr_scheduler": {"scheduler": config["lr_scheduler"], "interval": "step"}}


class LoopStates(Callback):
    """The fit loop's state and the trainer's metrics wherever Lightning's own loop runs: validations, the
    end of every 10th epoch (next_observed_epoch lets the fast path train the others in bulk), the end."""

    def __init__(self) -> None:
        self.states: list[tuple] = []

    def record(self, trainer: L.Trainer, where: str) -> None:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        logged = {name: float(value) for name, value in trainer.logged_metrics.items()}
        state = copy.deepcopy(trainer.fit_loop.state_dict())
        self.states.append((where, trainer.current_epoch, trainer.global_step, state, metrics, logged))

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int:
        return epoch + 9 - epoch % 10

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch % 10 == 9:
            self.record(trainer, "epoch end")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, "validation")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, "end")


def loop_states(make_model, batch_size: int | None, fast_path: bool) -> tuple[list[tuple], int]:
    """The states LoopStates records, and how many epochs the fast path trained in bulk."""
    model = make_model()
    model.fast_path = fast_path
    bulk = counting_bulk_epochs(model)
    states = LoopStates()
    trainer = L.Trainer(accelerator="cpu", max_epochs=64, check_val_every_n_epoch=25, callbacks=[states], **QUIET)
    trainer.fit(model, BlobData(batch_size=batch_size))
    return states.states, sum(bulk)


@pytest.mark.parametrize(
    ("make_model", "batch_size"),
    [
        (Sequential, None),  # automatic optimization
        (Scratch, None),  # manual optimization (a hand-written update)
        (lambda: Sequential(lr_scheduler=STEP_LR), None),  # a scheduler stepped every epoch
        (lambda: StepIntervalSchedule(lr_scheduler=STEP_LR), None),  # ... every step
        (Sequential, 100),  # 8 mini-batches an epoch, the last of 50 points
        (Scratch, 100),
        (lambda: Sequential(lr_scheduler=STEP_LR), 100),
        (lambda: StepIntervalSchedule(lr_scheduler=STEP_LR), 100),  # 8 scheduler steps an epoch
    ],
    ids=[
        "automatic", "manual", "epoch-scheduler", "step-scheduler",
        "mini-batch-automatic", "mini-batch-manual", "mini-batch-epoch-scheduler", "mini-batch-step-scheduler",
    ],
)  # fmt: skip
def test_epochs_trained_in_bulk_leave_lightnings_loop_state(make_model, batch_size):
    bulk, bulk_epochs = loop_states(make_model, batch_size, fast_path=True)
    own, own_epochs = loop_states(make_model, batch_size, fast_path=False)
    assert bulk_epochs > 40 and own_epochs == 0
    assert [state[:3] for state in bulk] == [state[:3] for state in own]
    for state, expected in zip(bulk, own):
        assert state == expected


def saves_and_checks(callback: Callback, **trainer_options) -> tuple:
    """What mlnet_lightning.internals reads of a ModelCheckpoint or EarlyStopping once a fit has set it up."""
    read = []

    class Reader(Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if isinstance(callback, ModelCheckpoint):
                read.append(checkpoint_every_n_epochs(callback, trainer))
            else:
                read.append(checks_every_train_epoch(callback))

    options = {**QUIET, "enable_checkpointing": isinstance(callback, ModelCheckpoint), **trainer_options}
    L.Trainer(accelerator="cpu", max_epochs=1, callbacks=[callback, Reader()], **options).fit(Sequential(), BlobData())
    return read[0]


@pytest.mark.parametrize(
    ("options", "check_val_every_n_epoch", "expected"),
    [
        ({"every_n_epochs": 7, "save_on_train_epoch_end": True}, 5, 7),
        ({"every_n_epochs": 7}, 1, 7),  # validating every epoch, it saves at the ends of training epochs
        ({"every_n_epochs": 7}, 5, 0),  # otherwise after validations
        ({"every_n_epochs": 7, "save_on_train_epoch_end": False}, 1, 0),
        ({"every_n_train_steps": 3}, 1, None),
        ({"train_time_interval": timedelta(minutes=1)}, 1, None),
    ],
)
def test_checkpoint_every_n_epochs_reads_what_model_checkpoint_was_given(
    tmp_path, options, check_val_every_n_epoch, expected
):
    callback = ModelCheckpoint(tmp_path, **options)
    assert saves_and_checks(callback, check_val_every_n_epoch=check_val_every_n_epoch) == expected


@pytest.mark.parametrize(
    ("check_on_train_epoch_end", "check_val_every_n_epoch", "expected"),
    [(True, 5, True), (False, 1, False), (None, 1, True), (None, 5, False)],
)
def test_checks_every_train_epoch_reads_what_early_stopping_was_given(
    check_on_train_epoch_end, check_val_every_n_epoch, expected
):
    callback = EarlyStopping("val/loss", check_on_train_epoch_end=check_on_train_epoch_end, strict=False)
    assert saves_and_checks(callback, check_val_every_n_epoch=check_val_every_n_epoch) is expected


def test_the_installed_versions_are_the_tested_ones():
    """A new torch, Lightning or TensorBoard must be tested before TESTED names it (else the fast path is off)."""
    assert internals.untested_versions() == []


def test_the_fast_path_steps_aside_with_one_warning_on_a_version_it_was_not_tested_on(monkeypatch):
    monkeypatch.setitem(internals.TESTED, "lightning", "2.5")  # as if lightning 2.6 were new
    internals.versions_tested.cache_clear()
    fitted = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for fast_path in (True, False):
                model = Sequential()
                model.fast_path = fast_path
                bulk = counting_bulk_epochs(model)
                L.Trainer(max_epochs=200, check_val_every_n_epoch=100, **QUIET).fit(model, BlobData())
                fitted.append((model.state_dict(), sum(bulk)))
    finally:
        internals.versions_tested.cache_clear()
    [warning] = [w for w in caught if issubclass(w.category, internals.UntestedVersion)]
    assert "tested with torch 2.13, lightning 2.5, tensorboard 2.21, and lightning 2.6." in str(warning.message)
    (on, bulk_on), (off, _) = fitted
    assert bulk_on == 0
    assert_same(on, off, "parameters")


def test_an_untested_version_can_be_tried_on_purpose(monkeypatch):
    """What scripts/gpu_check.py does on a GPU machine's own torch: the test of a version not yet in TESTED."""
    monkeypatch.setitem(internals.TESTED, "torch", "2.11")
    monkeypatch.setenv(internals.TRY_UNTESTED, "1")
    internals.versions_tested.cache_clear()
    try:
        model = Sequential()
        bulk = counting_bulk_epochs(model)
        L.Trainer(max_epochs=200, check_val_every_n_epoch=100, **QUIET).fit(model, BlobData())
    finally:
        internals.versions_tested.cache_clear()
    assert sum(bulk) > 190
