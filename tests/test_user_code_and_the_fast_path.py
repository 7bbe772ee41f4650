"""A user's own code beside the fast path: whatever it reads during training is what Lightning's own loop
gives, or the fast path steps aside. Each case is fitted with the fast path on (the default) and off
(Lightning's own loop), and where one applies against a plain PyTorch loop."""

from __future__ import annotations

import json
import os
import signal
import threading

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LambdaCallback,
    ModelCheckpoint,
    OnExceptionCheckpoint,
    Timer,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from mlnet_lightning import cli
from mlnet_lightning.baseline import one_cpu_thread
from mlnet_lightning.data import BlobData
from mlnet_lightning.fastpath import callback, fast_forward
from mlnet_lightning.models import Sequential
from tests.test_lightning_native import (
    assert_fast_path_changes_nothing,
    assert_same,
    counting_bulk_epochs,
    quiet_trainer,
)


class EpochAnnealed(Sequential):
    """A loss that grows with the epoch, as README invites ("override `loss`")."""

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return (1 + self.current_epoch / 100) * F.cross_entropy(output, target)


class StepAnnealed(Sequential):
    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return (1 + self.global_step / 100) * F.cross_entropy(output, target)


class Scheduled(Sequential):
    """A schedule kept in Python: the output is halved from the 250th forward in training on, a value that
    changes rarely enough to pass any check made on a few epochs."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.training_forwards = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.training_forwards += 1
        scale = 0.5 if self.training_forwards > 250 else 1.0
        return super().forward(x) * scale


def user_trainer(folder, **options) -> L.Trainer:
    """A Trainer as a user makes one: its defaults on (progress bar, logger, checkpoints, model summary)."""
    return L.Trainer(accelerator="cpu", default_root_dir=folder, **options)


def training_points() -> tuple[Tensor, Tensor]:
    data = BlobData()
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def plain_fit(model: Sequential, epochs: int, loss_at) -> dict[str, Tensor]:
    """The tutorial's loop: SGD at the model's rate, the loss at epoch `e` being `loss_at(e, output, y)`."""
    x, y = training_points()
    optimizer = torch.optim.SGD(model.parameters(), lr=model.hparams.lr)
    with one_cpu_thread():
        for epoch in range(epochs):
            loss = loss_at(epoch, model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.state_dict()


def fit_on_and_off(make_model, epochs: int, **options) -> tuple[dict, dict, list[int]]:
    """The parameters after a fit with the fast path on and off, and the bulks of the fit with it on."""
    fitted = []
    for fast_path in (True, False):
        model = make_model()
        model.fast_path = fast_path
        bulk = counting_bulk_epochs(model)
        quiet_trainer(max_epochs=epochs, check_val_every_n_epoch=10_000, **options).fit(model, BlobData())
        fitted.append((model.state_dict(), bulk))
    (on, bulk), (off, _) = fitted
    return on, off, bulk


@pytest.mark.parametrize(
    ("network", "loss_at"),
    [
        (EpochAnnealed, lambda epoch, out, y: (1 + epoch / 100) * F.cross_entropy(out, y)),
        (StepAnnealed, lambda epoch, out, y: (1 + epoch / 100) * F.cross_entropy(out, y)),  # one step an epoch
        (Scheduled, lambda epoch, out, y: F.cross_entropy(out * (0.5 if epoch >= 250 else 1.0), y)),
    ],
    ids=["current_epoch", "global_step", "python-schedule"],
)
def test_a_network_reading_python_state_trains_as_lightnings_own_loop(network, loss_at):
    on, off, bulk = fit_on_and_off(network, 300)
    assert sum(bulk) == 0  # a subclass of one's own that does not opt in: Lightning trains every epoch
    assert_same(on, off, "parameters")
    plain = plain_fit(Sequential(), 300, loss_at)
    for name, tensor in plain.items():
        assert torch.allclose(on[name], tensor, atol=1e-6), name


class Doubled(Sequential):
    """A loss of one's own that computes every epoch the same, and says so."""

    fast_path = True

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return 2 * F.cross_entropy(output, target)


class Shifted(Sequential):
    fast_path = True

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x + 1.0)


@pytest.mark.parametrize("batch_size", [None, 75], ids=["full-batch", "mini-batch"])
@pytest.mark.parametrize("network", [Doubled, Shifted], ids=["loss", "forward"])
def test_a_subclass_that_opts_in_keeps_the_fast_path_and_lightnings_numbers(tmp_path, network, batch_size):
    options = {"max_epochs": 130, "check_val_every_n_epoch": 50, "checkpoint_every": 30, "watch_every": 20}
    on = assert_fast_path_changes_nothing(tmp_path, network, batch_size, **options)
    assert on["bulk"] > 60


def a_subclass_counting(base: type, *args, **kwargs) -> L.Callback:
    class Counting(base):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            super().on_train_epoch_end(trainer, pl_module)
            self.calls = getattr(self, "calls", 0) + 1

    return Counting(*args, **kwargs)


def lambda_counting() -> L.Callback:
    callback = LambdaCallback(on_train_epoch_end=lambda trainer, module: setattr(callback, "calls", callback.calls + 1))
    callback.calls = 0
    return callback


@pytest.mark.parametrize(
    "make_callback",
    [
        lambda_counting,
        lambda: a_subclass_counting(TQDMProgressBar),
        lambda: a_subclass_counting(ModelCheckpoint, every_n_epochs=50, save_on_train_epoch_end=True),
        lambda: a_subclass_counting(EarlyStopping, monitor="val/acc", mode="max"),
        lambda: a_subclass_counting(Timer, duration="00:01:00:00"),
    ],
    ids=["LambdaCallback", "TQDMProgressBar", "ModelCheckpoint", "EarlyStopping", "Timer"],
)
def test_an_epoch_hook_of_ones_own_runs_every_epoch(tmp_path, make_callback):
    callback = make_callback()
    model = Sequential()
    bulk = counting_bulk_epochs(model)
    trainer = user_trainer(tmp_path, max_epochs=200, check_val_every_n_epoch=100, callbacks=[callback])
    trainer.fit(model, BlobData())
    assert callback.calls == 200 and sum(bulk) == 0


def test_the_project_callbacks_keep_the_fast_path(tmp_path, monkeypatch):
    """train.py's own callbacks (its progress bar, checkpoints, pictures, Ctrl-C handling) say when they
    look: its fit, defaults on, trains the epochs between them in bulk."""
    bulks = []

    def counted(module, batch):
        bulks.append(fast_forward(module, batch))
        return bulks[-1]

    monkeypatch.setattr(callback, "fast_forward", counted)
    assert cli.main(["--model", "sequential", "--max_epochs", "3000", "--default_root_dir", str(tmp_path)]) == 0
    summary = json.loads(next(tmp_path.glob("*/version_0/summary.json")).read_text())
    assert summary["epochs"] == 3000 and sum(bulks) > 2900


@pytest.fixture
def python_ctrl_c():
    """Python's own SIGINT handler (KeyboardInterrupt), as in a notebook or a script without handlers;
    Lightning sets it to SIG_IGN as it shuts down."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class CtrlCAtEpochCall(Sequential):
    """Ctrl-C pressed in the `call`-th step, the fast path's bulk training it eagerly."""

    fast_path = True

    def __init__(self, call: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.call, self.calls = call, 0

    def step(self, *args):
        self.calls += 1
        if self.calls == self.call:
            os.kill(os.getpid(), signal.SIGINT)
        return super().step(*args)


def weights_after_plain_steps(steps: int) -> dict[str, Tensor]:
    """Lightning's own loop, `steps` steps."""
    model = Sequential()
    model.fast_path = False
    quiet_trainer(max_steps=steps, check_val_every_n_epoch=10_000).fit(model, BlobData())
    return model.state_dict()


def interrupted_checkpoint(tmp_path, model, interrupt=lambda: None) -> dict:
    callback = OnExceptionCheckpoint(tmp_path)
    trainer = user_trainer(tmp_path, max_epochs=1_000_000, check_val_every_n_epoch=1_000_000, callbacks=[callback])
    interrupt()
    with pytest.raises(SystemExit):  # Lightning's answer to KeyboardInterrupt: checkpoint, then exit(1)
        trainer.fit(model, BlobData())
    return torch.load(tmp_path / "on_exception.ckpt", weights_only=False)


def test_ctrl_c_inside_a_bulk_saves_the_weights_of_its_global_step(tmp_path, python_ctrl_c):
    checkpoint = interrupted_checkpoint(tmp_path, CtrlCAtEpochCall(call=3))
    assert checkpoint["global_step"] > 0
    assert_same(checkpoint["state_dict"], weights_after_plain_steps(checkpoint["global_step"]), "weights")


def test_ctrl_c_at_any_instant_saves_the_weights_of_its_global_step(tmp_path, python_ctrl_c):
    """At a random instant: most of a fit's time is inside bulks, replayed from the tape."""
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    checkpoint = interrupted_checkpoint(tmp_path, Sequential(), timer.start)
    assert checkpoint["global_step"] > 100
    assert_same(checkpoint["state_dict"], weights_after_plain_steps(checkpoint["global_step"]), "weights")


class FullDisk(CSVLogger):
    """A logger whose flush fails once it holds the points of step 1500 on, as on a disk that has filled up."""

    def save(self) -> None:
        if any(point.get("step", 0) >= 1500 for point in self.experiment.metrics):
            raise OSError(28, "No space left on device")
        super().save()


def test_a_failed_write_inside_a_bulk_leaves_the_weights_of_its_global_step(tmp_path):
    checkpoint = OnExceptionCheckpoint(tmp_path)
    options = {"logger": FullDisk(tmp_path), "callbacks": [checkpoint]}
    trainer = user_trainer(tmp_path, max_epochs=5000, check_val_every_n_epoch=10_000, **options)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit(Sequential(), BlobData())
    saved = torch.load(tmp_path / "on_exception.ckpt", weights_only=False)
    assert saved["global_step"] >= 1000
    assert_same(saved["state_dict"], weights_after_plain_steps(saved["global_step"]), "weights")


def test_barebones_logs_nothing_with_the_fast_path_on():
    fitted = []
    for fast_path in (True, False):
        model = Sequential()
        model.fast_path = fast_path
        bulk = counting_bulk_epochs(model)
        trainer = L.Trainer(accelerator="cpu", barebones=True, max_epochs=300, check_val_every_n_epoch=100)
        trainer.fit(model, BlobData())
        assert dict(trainer.callback_metrics) == {} and dict(trainer.logged_metrics) == {}
        fitted.append((model.state_dict(), sum(bulk)))
    (on, bulk_on), (off, bulk_off) = fitted
    assert bulk_on > 200 and bulk_off == 0
    assert_same(on, off, "parameters")
