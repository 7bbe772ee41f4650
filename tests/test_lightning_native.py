"""The built-in networks and data modules as a Lightning user meets them, from Python and from the
command line: each documented behaviour asserted by its result (epochs, steps, parameters against a plain
PyTorch loop, returned metrics, callback calls, logged points), and the fast path switched on and off."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.tuner import Tuner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

from mlnet_lightning import cli
from mlnet_lightning.baseline import fit_plain, hand_cross_entropy, tutorial_network
from mlnet_lightning.data import BlobData, TensorBatches, shuffled_order
from mlnet_lightning.fastpath import FastPath
from mlnet_lightning.models import MODELS, TUTORIAL_MODELS, Linear, Scratch, Sequential, TutorialModule
from tests.conftest import train

# scripts/gpu_check.sh runs the tests that compare nothing with a loop on the CPU on the GPU too.
ACCELERATOR = os.environ.get("MLNET_TEST_ACCELERATOR", "cpu")
QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
BY_HAND = ("scratch", "functional", "parameter")
WITH_OPTIM = ("linear", "sequential")
DATA = BlobData()


def quiet_trainer(**options) -> L.Trainer:
    """A Trainer that writes nothing unless asked to."""
    return L.Trainer(**{"accelerator": ACCELERATOR, **QUIET, **options})


def trained_tensors(model: L.LightningModule) -> list[Tensor]:
    """What a network trains, in the order it makes them: its parameters, or scratch's raw tensors."""
    return [t for t in (*model.parameters(), *model.buffers()) if t.requires_grad]


def plain_loss(name: str, logits: bool):
    if name == "scratch":
        return (lambda out, y: hand_cross_entropy(out.softmax(-1), y)) if logits else hand_cross_entropy
    return F.cross_entropy


def plain_parameters(name: str, epochs: int, batch_size: int | None = None, logits: bool = False) -> list[Tensor]:
    """The parameters after mlnet_lightning.baseline's plain loop (mini-batches in the data module's order)."""
    net, update = tutorial_network(name, logits)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2) if update == "sgd" else None
    fit_plain(net, plain_loss(name, logits), optimizer, DATA.x_train, DATA.y_train, DATA.x_val, DATA.y_val, epochs,
              batch_size=batch_size)  # fmt: skip
    return list(net.parameters())


def assert_same_tensors(ours: list[Tensor], theirs: list[Tensor]) -> None:
    """Equal up to float32 rounding: the plain loops compute the same formulas in their own way (a
    softmax of nn.Softmax against the tutorial's exp / sum)."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)


# ---- The examples of issue 11, as a notebook writes them ----


def test_max_epochs_is_passes_over_the_data(tmp_path):
    trainer = L.Trainer(max_epochs=100, default_root_dir=tmp_path)  # every default: logger, checkpoint, bar
    model = Sequential()
    trainer.fit(model, BlobData())
    assert trainer.current_epoch == 100 and trainer.global_step == 100
    assert_same_tensors(trained_tensors(model), plain_parameters("sequential", 100))
    assert [p.name for p in (tmp_path / "lightning_logs/version_0/checkpoints").iterdir()] == ["epoch=99-step=100.ckpt"]


class EpochShuffle(Sampler[int]):
    """A user's shuffling that Lightning tells the epoch (set_epoch), drawn as the data module shuffles."""

    def __init__(self, size: int) -> None:
        self.size, self.epoch = size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(shuffled_order(self.size, 0, self.epoch).tolist())

    def __len__(self) -> int:
        return self.size


@pytest.mark.parametrize("name", TUTORIAL_MODELS)
def test_a_users_dataloader_trains_as_the_plain_loop(name):
    dataset = TensorDataset(DATA.x_train, DATA.y_train)
    model = TUTORIAL_MODELS[name]()
    quiet_trainer(max_epochs=30).fit(model, DataLoader(dataset, batch_size=750))
    assert_same_tensors(trained_tensors(model), plain_parameters(name, 30))
    model = TUTORIAL_MODELS[name]()
    trainer = quiet_trainer(max_epochs=3)
    trainer.fit(model, DataLoader(dataset, batch_size=64, sampler=EpochShuffle(len(dataset))))
    assert trainer.global_step == 3 * 12
    assert_same_tensors(trained_tensors(model), plain_parameters(name, 3, batch_size=64))


@pytest.mark.parametrize("name", ["scratch", "sequential"])
def test_max_steps_stops_at_that_optimizer_step(name):
    trainer = quiet_trainer(max_steps=150, max_epochs=-1)
    model = TUTORIAL_MODELS[name]()
    trainer.fit(model, BlobData())
    assert trainer.global_step == 150 and trainer.current_epoch == 150
    assert_same_tensors(trained_tensors(model), plain_parameters(name, 150))
    trainer = quiet_trainer(max_steps=30)
    trainer.fit(TUTORIAL_MODELS[name](), BlobData(batch_size=64))  # 12 steps an epoch
    assert trainer.global_step == 30
    assert trainer.fit_loop.epoch_loop.batch_progress.current.completed == 6  # half-way through the third epoch


def test_fast_dev_run_trains_one_step_and_writes_nothing(tmp_path):
    trainer = L.Trainer(fast_dev_run=True, default_root_dir=tmp_path, enable_progress_bar=False)
    model = Sequential()
    trainer.fit(model, BlobData())
    assert trainer.global_step == 1
    assert_same_tensors(trained_tensors(model), plain_parameters("sequential", 1))
    assert list(tmp_path.iterdir()) == []  # "Logging and checkpointing is suppressed"


def test_limit_train_batches_limits_the_steps_of_each_epoch():
    trainer = quiet_trainer(max_epochs=4, limit_train_batches=3)
    trainer.fit(Linear(), BlobData(batch_size=64))
    assert trainer.num_training_batches == 3
    assert trainer.current_epoch == 4 and trainer.global_step == 12


@pytest.mark.parametrize("model_class", [Linear, Sequential])
def test_lr_find_suggests_a_rate_within_its_range(tmp_path, model_class):
    model = model_class()
    trainer = quiet_trainer(default_root_dir=tmp_path)  # lr_find takes a step an epoch: max_epochs 1000 allows 60
    finder = Tuner(trainer).lr_find(model, datamodule=BlobData(), min_lr=1e-4, max_lr=10.0, num_training=60)
    suggestion = finder.suggestion()
    assert math.isfinite(suggestion) and 1e-4 <= suggestion <= 10.0
    rates, losses = finder.results["lr"], finder.results["loss"]
    assert len(rates) == 60 and rates == sorted(rates) and rates[0] < 2e-4  # one rate a step, growing
    assert all(math.isfinite(loss) for loss in losses)
    assert model.hparams.lr == suggestion  # lr_find's update_attr: the rate the next fit trains at
    assert model.configure_optimizers().param_groups[0]["lr"] == suggestion
    assert trainer.global_step == 0  # the search's steps are undone


def test_scale_batch_size_grows_a_mini_batch_data_module(tmp_path):
    data = BlobData(batch_size=64)
    trainer = quiet_trainer(max_epochs=2, default_root_dir=tmp_path)
    found = Tuner(trainer).scale_batch_size(Sequential(), datamodule=data, steps_per_trial=2)
    # Doubling until no error or the whole training set: every size fits these networks.
    assert found == data.batch_size == 1024
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(Sequential(), data)
    assert trainer.num_training_batches == 1 and trainer.global_step == 2


def plain_sgd_loop(
    name: str,
    epochs: int,
    batch_size: int | None = None,
    clip: float | None = None,
    accumulate: int = 1,
    step_lr: tuple[int, float] | None = None,
) -> list[Tensor]:
    """Lightning's documented automatic optimization by hand: the loss divided by `accumulate`, a step
    every `accumulate` batches and at the end of each epoch, gradients clipped to norm `clip` before it,
    the rate multiplied by gamma every step_size epochs for step_lr = (step_size, gamma)."""
    net, _ = tutorial_network(name)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
    epoch = 0
    batches = TensorBatches(DATA.x_train, DATA.y_train, batch_size, seed=0, epoch=lambda: epoch)
    for epoch in range(epochs):  # noqa: B007 (read by `batches`)
        for i, (x, y) in enumerate(batches):
            (F.cross_entropy(net(x), y) / accumulate).backward()
            if (i + 1) % accumulate == 0 or i + 1 == len(batches):
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
                optimizer.step()
                optimizer.zero_grad()
        if step_lr is not None and (epoch + 1) % step_lr[0] == 0:
            optimizer.param_groups[0]["lr"] *= step_lr[1]
    return list(net.parameters())


@pytest.mark.parametrize("name", WITH_OPTIM)
def test_gradient_clipping_as_a_plain_loop_that_clips(name):
    model = TUTORIAL_MODELS[name]()
    quiet_trainer(max_epochs=40, gradient_clip_val=0.01).fit(model, BlobData())
    clipped = plain_sgd_loop(name, 40, None, clip=0.01)
    assert_same_tensors(trained_tensors(model), clipped)
    assert not torch.equal(clipped[0], plain_parameters(name, 40)[0])  # the clip did cut the steps


@pytest.mark.parametrize("name", WITH_OPTIM)
def test_gradient_accumulation_as_a_plain_loop_that_accumulates(name):
    model = TUTORIAL_MODELS[name]()
    trainer = quiet_trainer(max_epochs=5, accumulate_grad_batches=2)
    trainer.fit(model, BlobData(batch_size=250))  # 3 batches an epoch: steps after the 2nd and the 3rd
    assert trainer.global_step == 10
    assert_same_tensors(trained_tensors(model), plain_sgd_loop(name, 5, 250, accumulate=2))


@pytest.mark.parametrize("name", BY_HAND)
@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"gradient_clip_val": 0.5}, "Automatic gradient clipping is not supported for manual optimization"),
        ({"accumulate_grad_batches": 2}, "Automatic gradient accumulation is not supported for manual optimization"),
    ],
)
def test_hand_updates_get_lightnings_message_for_clipping_and_accumulation(name, option, message):
    with pytest.raises(MisconfigurationException, match=message):
        quiet_trainer(max_epochs=2, **option).fit(TUTORIAL_MODELS[name](), BlobData())


def direct_metrics(model: L.LightningModule, x: Tensor, y: Tensor) -> tuple[float, float]:
    with torch.no_grad():
        output = model(x)
    return model.loss(output, y).item(), output.argmax(-1).eq(y).float().mean().item()


@pytest.mark.parametrize("name", ["scratch", "sequential"])
def test_validate_and_test_return_loss_and_accuracy_of_their_split(name):
    model, data = TUTORIAL_MODELS[name](), BlobData()
    trainer = quiet_trainer(max_epochs=50)
    trainer.fit(model, data)
    loss, acc = direct_metrics(model, DATA.x_val, DATA.y_val)
    [validated] = trainer.validate(model, data, verbose=False)
    assert validated == pytest.approx({"val/loss": loss, "val/acc": acc}, abs=1e-6)
    [tested] = trainer.test(model, data, verbose=False)  # no separate test split: the held-out 25%
    assert tested == pytest.approx({"test/loss": loss, "test/acc": acc}, abs=1e-6)


def test_a_separate_test_split_leaves_the_tutorials_split_and_numbers_alone():
    data = BlobData(test_size=200)
    assert torch.equal(data.x_train, DATA.x_train) and torch.equal(data.y_train, DATA.y_train)
    assert torch.equal(data.x_val, DATA.x_val) and torch.equal(data.y_val, DATA.y_val)
    assert len(data.x_test) == 200 and data.y_test.bincount().tolist() == [50, 50, 50, 50]
    assert not any(torch.equal(point, other) for point in data.x_test[:20] for other in DATA.x_train)
    model = Sequential()
    trainer = quiet_trainer(max_epochs=30)
    trainer.fit(model, data)
    assert_same_tensors(trained_tensors(model), plain_parameters("sequential", 30))
    loss, acc = direct_metrics(model, data.x_test, data.y_test)
    [tested] = trainer.test(model, data, verbose=False)
    assert tested == pytest.approx({"test/loss": loss, "test/acc": acc}, abs=1e-6)


@pytest.mark.parametrize("logits", [False, True])
def test_predict_returns_class_probabilities(logits):
    model, data = Sequential(logits=logits), BlobData()
    trainer = quiet_trainer(max_epochs=20)
    trainer.fit(model, data)
    probabilities = torch.cat(trainer.predict(model, data))
    assert probabilities.shape == (250, 4) and probabilities.min() >= 0
    assert probabilities.sum(-1) == pytest.approx(torch.ones(250), abs=1e-6)
    with torch.no_grad():
        assert torch.equal(probabilities.argmax(-1), model(DATA.x_val).argmax(-1))


# ---- The contract: Lightning's epochs, as Lightning counts them ----


def counting_bulk_epochs(model: TutorialModule) -> list[int]:
    """Count the epochs the fast path trains in bulk (eagerly or replayed), one entry per hook call of the
    FastPath callback the model gives the Trainer: it trains them in on_train_batch_start (full batch) or
    on_train_epoch_start (mini-batches), moving current_epoch on."""
    bulks: list[int] = []

    class CountingFastPath(FastPath):
        def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> None:
            return None

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            epoch = trainer.current_epoch
            super().on_train_epoch_start(trainer, pl_module)
            bulks.append(trainer.current_epoch - epoch)

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
            epoch = trainer.current_epoch
            super().on_train_batch_start(trainer, pl_module, *args)
            bulks.append(trainer.current_epoch - epoch)

    given = model.configure_callbacks
    model.configure_callbacks = lambda: [CountingFastPath() if isinstance(c, FastPath) else c for c in given()]
    return bulks


class Validations(Callback):
    """Records the epochs of validations (no training-epoch hook: the fast path need not step aside)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.epochs.append(trainer.current_epoch)


class TrainEpochEnds(Callback):
    """A user's callback with a per-epoch hook, as the docs write one."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)


def test_check_val_every_n_epoch_validates_at_those_epochs():
    validations, model = Validations(), Sequential()
    bulk = counting_bulk_epochs(model)
    trainer = quiet_trainer(max_epochs=250, check_val_every_n_epoch=50, callbacks=[validations])
    trainer.fit(model, BlobData())
    assert validations.epochs == [49, 99, 149, 199, 249]
    assert trainer.global_step == 250 and sum(bulk) > 0
    loss, acc = direct_metrics(model, DATA.x_val, DATA.y_val)
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(loss, abs=1e-6)
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(acc, abs=1e-6)


def checkpoints(folder: Path) -> dict[str, dict]:
    return {path.name: torch.load(path, weights_only=False) for path in sorted(folder.glob("*.ckpt"))}


def test_model_checkpoint_every_n_epochs_names_and_contents(tmp_path):
    at_validations = ModelCheckpoint(tmp_path / "val", every_n_epochs=2, save_top_k=-1)
    at_epoch_ends = ModelCheckpoint(tmp_path / "train", every_n_epochs=30, save_top_k=-1, save_on_train_epoch_end=True)
    model = Sequential()
    callbacks = [at_validations, at_epoch_ends]
    trainer = quiet_trainer(max_epochs=200, check_val_every_n_epoch=50, callbacks=callbacks, enable_checkpointing=True)
    trainer.fit(model, BlobData())
    # Without save_on_train_epoch_end, and validating every 50 epochs, a checkpoint waits for validations.
    saved = checkpoints(tmp_path / "val")
    assert set(saved) == {f"epoch={e}-step={e + 1}.ckpt" for e in (49, 99, 149, 199)}
    saved = checkpoints(tmp_path / "train")
    assert set(saved) == {f"epoch={e}-step={e + 1}.ckpt" for e in (29, 59, 89, 119, 149, 179)}
    last = saved["epoch=179-step=180.ckpt"]
    assert last["epoch"] == 179 and last["global_step"] == 180
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 179
    restored = Sequential()
    restored.load_state_dict(last["state_dict"])
    assert_same_tensors(trained_tensors(restored), plain_parameters("sequential", 180))


def test_early_stopping_patience_counts_validations():
    stopper = EarlyStopping(monitor="val/loss", patience=2, min_delta=10.0)  # no validation improves by 10
    trainer = quiet_trainer(max_epochs=1000, check_val_every_n_epoch=10, callbacks=[stopper])
    trainer.fit(Sequential(), BlobData())
    # The first validation (epoch 9) sets the best; the 2nd and 3rd (19, 29) do not improve: stop.
    assert stopper.stopped_epoch == 29 and trainer.current_epoch == 30 and trainer.global_step == 30


def test_early_stopping_on_a_training_metric_checks_every_epoch():
    stopper = EarlyStopping(monitor="train/loss", patience=3, min_delta=10.0)
    trainer = quiet_trainer(max_epochs=1000, limit_val_batches=0, callbacks=[stopper])
    trainer.fit(Sequential(), BlobData())
    assert stopper.stopped_epoch == 3 and trainer.current_epoch == 4


STEP_LR = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 30, "gamma": 0.5}}


def csv_rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("name", WITH_OPTIM)
def test_an_epoch_scheduler_steps_once_an_epoch(tmp_path, name):
    model = TUTORIAL_MODELS[name](lr_scheduler=STEP_LR)
    logger = CSVLogger(tmp_path)
    trainer = quiet_trainer(max_epochs=100, check_val_every_n_epoch=100, logger=logger)
    trainer.fit(model, BlobData())
    rates = {int(row["epoch"]): float(row["train/lr"]) for row in csv_rows(logger) if row["train/lr"]}
    assert list(rates) == list(range(100))
    assert all(rate == pytest.approx(0.2 * 0.5 ** (epoch // 30), rel=1e-6) for epoch, rate in rates.items())
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.2 * 0.5**3)  # after 100 steps
    assert_same_tensors(trained_tensors(model), plain_sgd_loop(name, 100, None, step_lr=(30, 0.5)))


def test_max_time_stops_the_fit():
    trainer = quiet_trainer(max_time={"seconds": 2}, max_epochs=-1, check_val_every_n_epoch=100)
    trainer.fit(Sequential(), BlobData())
    timer = next(callback for callback in trainer.callbacks if isinstance(callback, Timer))
    assert 2.0 <= timer.time_elapsed("train") < 4.0
    assert trainer.current_epoch > 100 and trainer.global_step == trainer.current_epoch


def test_a_users_epoch_callback_sees_every_epoch():
    ends, validations, model = TrainEpochEnds(), Validations(), Linear()
    bulk = counting_bulk_epochs(model)
    trainer = quiet_trainer(max_epochs=120, check_val_every_n_epoch=50, callbacks=[ends, validations])
    trainer.fit(model, BlobData())
    assert ends.epochs == list(range(120)) and validations.epochs == [49, 99]
    assert sum(bulk) == 0  # the fast path stepped aside


def tensorboard_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(log_dir)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize(("batch_size", "batches"), [(None, 1), (250, 3)])
def test_loggers_get_a_point_per_epoch(tmp_path, batch_size, batches):
    epochs = 120 if batches == 1 else 10
    csv_logger, tensorboard = CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")
    trainer = quiet_trainer(max_epochs=epochs, check_val_every_n_epoch=5, logger=[csv_logger, tensorboard])
    trainer.fit(Scratch(), BlobData(batch_size=batch_size))
    steps = [batches * (epoch + 1) - 1 for epoch in range(epochs)]  # the optimizer steps before each epoch's end
    net, _ = tutorial_network("scratch")
    plain = fit_plain(net, hand_cross_entropy, None, *DATA.shares["train"], *DATA.shares["val"], epochs,
                      batch_size=batch_size)  # fmt: skip
    rows = [row for row in csv_rows(csv_logger) if row["train/loss"]]
    assert [(int(row["epoch"]), int(row["step"])) for row in rows] == list(zip(range(epochs), steps))
    assert [float(row["train/loss"]) for row in rows] == pytest.approx(plain.losses, abs=1e-6)
    assert [float(row["train/acc"]) for row in rows] == pytest.approx(plain.train_accs, abs=1e-6)
    validated = [int(row["epoch"]) for row in csv_rows(csv_logger) if row["val/loss"]]
    assert validated == list(range(4, epochs, 5))
    scalars = tensorboard_scalars(tensorboard.log_dir)
    assert [step for step, _ in scalars["train/loss"]] == steps
    # Lightning adds "epoch" to each logging: the end of every training epoch and of every validation.
    epoch_points = [(step, float(epoch)) for epoch, step in enumerate(steps)] + [
        (steps[e], float(e)) for e in validated
    ]
    assert sorted(scalars["epoch"]) == sorted(epoch_points)
    assert [value for _, value in scalars["train/loss"]] == [float(row["train/loss"]) for row in rows]
    assert [step for step, _ in scalars["val/acc"]] == [steps[epoch] for epoch in validated]


# ---- The fast path: an optimization, never a semantic ----


class EveryNthEpoch(Callback):
    """A user's callback that acts at the end of every n-th epoch and says so (next_observed_epoch), so
    that the fast path may train the epochs between in bulk. It records what it sees when it acts, and
    how often each of its other hooks ran."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.seen: list[tuple] = []
        self.calls: dict[str, int] = {}

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int:
        return -(-(epoch + 1) // self.every) * self.every - 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:
            metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
            state = [t.detach().clone() for t in trained_tensors(pl_module)]
            self.seen.append((trainer.current_epoch, trainer.global_step, metrics, state))

    def count(self, hook: str) -> None:
        self.calls[hook] = self.calls.get(hook, 0) + 1

    def on_fit_start(self, *args) -> None:
        self.count("on_fit_start")

    def on_train_start(self, *args) -> None:
        self.count("on_train_start")

    def on_validation_end(self, *args) -> None:
        self.count("on_validation_end")

    def on_save_checkpoint(self, *args) -> None:
        self.count("on_save_checkpoint")

    def on_train_end(self, *args) -> None:
        self.count("on_train_end")


def assert_same(a, b, where: str = "") -> None:
    """Bitwise equality of nested checkpoint contents."""
    assert type(a) is type(b), where
    if isinstance(a, Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


CHECKPOINT_KEYS = ("epoch", "global_step", "state_dict", "optimizer_states", "lr_schedulers", "loops")


def fit_and_record(folder: Path, model: TutorialModule, data: BlobData, fast_path: bool, **options) -> dict:
    """Fit with two loggers, a ModelCheckpoint at epoch ends and one at validations (best val/acc),
    EveryNthEpoch and the callbacks `options["callbacks"]()` makes; return all that Lightning documents as
    observable."""
    model.fast_path = fast_path
    bulk = counting_bulk_epochs(model)
    watcher = EveryNthEpoch(options.pop("watch_every"))
    every = options.pop("checkpoint_every")
    callbacks = [
        watcher,
        ModelCheckpoint(folder / "epochs", every_n_epochs=every, save_top_k=-1, save_on_train_epoch_end=True),
        ModelCheckpoint(folder / "best", monitor="val/acc", mode="max", filename="{epoch}-best", save_last=True),
        *options.pop("callbacks", list)(),
    ]
    loggers = [CSVLogger(folder, name="csv"), TensorBoardLogger(folder, name="tb")]
    ckpt_path = options.pop("ckpt_path", None)
    quiet = {"enable_progress_bar": False, "enable_model_summary": False}
    trainer = L.Trainer(accelerator=ACCELERATOR, logger=loggers, callbacks=callbacks, **quiet, **options)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    saved = {
        f"{path.parent.name}/{path.name}": {key: torch.load(path, weights_only=False)[key] for key in CHECKPOINT_KEYS}
        for path in folder.glob("*/*.ckpt")
    }
    return {
        "parameters": model.state_dict(),
        "epochs": (trainer.current_epoch, trainer.global_step),
        "csv": (Path(loggers[0].log_dir) / "metrics.csv").read_text(),
        "tensorboard": tensorboard_scalars(loggers[1].log_dir),
        "checkpoints": saved,
        "seen": watcher.seen,
        "calls": watcher.calls,
        "bulk": sum(bulk),
    }


def assert_fast_path_changes_nothing(
    tmp_path: Path, make_model, batch_size: int | None, make_data=BlobData, **options
) -> dict:
    """The same fit with the fast path on and off: bitwise the same; returns the record with it on."""
    on = fit_and_record(tmp_path / "on", make_model(), make_data(batch_size=batch_size), True, **dict(options))
    off = fit_and_record(tmp_path / "off", make_model(), make_data(batch_size=batch_size), False, **dict(options))
    assert off["bulk"] == 0
    assert on["epochs"] == off["epochs"]
    assert_same(on["parameters"], off["parameters"], "parameters")
    assert on["csv"] == off["csv"]
    assert on["tensorboard"] == off["tensorboard"]
    assert sorted(on["checkpoints"]) == sorted(off["checkpoints"]) and on["checkpoints"]
    for name, contents in on["checkpoints"].items():
        assert_same(contents, off["checkpoints"][name], name)
    assert on["seen"] and len(on["seen"]) == len(off["seen"])
    for seen_on, seen_off in zip(on["seen"], off["seen"]):
        assert seen_on[:3] == seen_off[:3]
        assert_same(seen_on[3], seen_off[3], "tensors seen")
    assert on["calls"] == off["calls"]
    return on


NETWORKS = [
    *((name, logits) for name in TUTORIAL_MODELS for logits in (False, True)),
    ("mlp", True),
]
FULL_BATCH = {"max_epochs": 130, "check_val_every_n_epoch": 50, "checkpoint_every": 30, "watch_every": 20}
MINI_BATCH = {"max_epochs": 60, "check_val_every_n_epoch": 25, "checkpoint_every": 20, "watch_every": 8}


@pytest.mark.parametrize(("name", "logits"), NETWORKS)
def test_fast_path_changes_nothing_full_batch(tmp_path, name, logits):
    on = assert_fast_path_changes_nothing(tmp_path, lambda: MODELS[name](logits=logits), None, **FULL_BATCH)
    # Every epoch but those observed (validations, checkpoints, the watcher's, the last) trained in bulk.
    assert on["bulk"] > 60


@pytest.mark.parametrize(("name", "logits"), NETWORKS)
def test_fast_path_changes_nothing_mini_batch(tmp_path, name, logits):
    on = assert_fast_path_changes_nothing(tmp_path, lambda: MODELS[name](logits=logits), 250, **MINI_BATCH)
    # Every epoch but the 11 observed (validations, checkpoints, the watcher's, the last) trained in bulk.
    assert on["bulk"] == 49


class UnshuffledBlobData(BlobData):
    """Mini-batches in the same order every epoch: the loader is told no epoch to shuffle by."""

    def train_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.shares["train"], self.batch_size)


@pytest.mark.parametrize(
    ("make_model", "batch_size", "make_data"),
    [
        (Scratch, 100, BlobData),  # 8 batches, the last of 50 points; a hand update
        (Sequential, 100, BlobData),
        (lambda: Sequential(lr_scheduler=STEP_LR), 100, BlobData),  # stepped at the end of each epoch
        (Scratch, 75, UnshuffledBlobData),
        (Sequential, 75, UnshuffledBlobData),
    ],
    ids=["scratch-uneven", "sequential-uneven", "sequential-uneven-scheduler", "scratch-unshuffled", "unshuffled"],
)
def test_fast_path_changes_nothing_mini_batch_uneven_or_unshuffled(tmp_path, make_model, batch_size, make_data):
    on = assert_fast_path_changes_nothing(tmp_path, make_model, batch_size, make_data, **MINI_BATCH)
    assert on["bulk"] == 49


@pytest.mark.parametrize("name", WITH_OPTIM)
def test_fast_path_changes_nothing_with_an_epoch_scheduler(tmp_path, name):
    on = assert_fast_path_changes_nothing(tmp_path, lambda: MODELS[name](lr_scheduler=STEP_LR), None, **FULL_BATCH)
    assert on["bulk"] > 60


def test_fast_path_changes_nothing_when_early_stopping(tmp_path):
    options = {**FULL_BATCH, "max_epochs": 2000, "check_val_every_n_epoch": 25}
    stop = {"monitor": "val/loss", "patience": 2, "min_delta": 0.01}
    on = assert_fast_path_changes_nothing(
        tmp_path, Sequential, None, callbacks=lambda: [EarlyStopping(**stop)], **options
    )
    assert on["epochs"][0] < 2000 and on["bulk"] > 0


@pytest.mark.parametrize("name", ["scratch", "sequential"])
def test_fast_path_changes_nothing_when_resuming(tmp_path, name):
    first = ModelCheckpoint(tmp_path / "first", every_n_epochs=30, save_top_k=-1, save_on_train_epoch_end=True)
    trainer = quiet_trainer(max_epochs=45, check_val_every_n_epoch=50, callbacks=[first], enable_checkpointing=True)
    trainer.fit(MODELS[name](), BlobData())
    resumed = str(tmp_path / "first" / "epoch=29-step=30.ckpt")
    on = assert_fast_path_changes_nothing(tmp_path, MODELS[name], None, ckpt_path=resumed, **FULL_BATCH)
    assert on["bulk"] > 40


def test_fast_path_changes_nothing_mini_batch_in_double_precision(tmp_path):
    on = assert_fast_path_changes_nothing(
        tmp_path, lambda: Sequential(lr_scheduler=STEP_LR), 100, precision="64-true", **MINI_BATCH
    )
    assert on["bulk"] == 49


@pytest.mark.parametrize("name", ["scratch", "sequential"])
def test_fast_path_changes_nothing_when_resuming_mini_batch(tmp_path, name):
    first = ModelCheckpoint(tmp_path / "first", every_n_epochs=30, save_top_k=-1, save_on_train_epoch_end=True)
    trainer = quiet_trainer(max_epochs=45, check_val_every_n_epoch=50, callbacks=[first], enable_checkpointing=True)
    trainer.fit(MODELS[name](), BlobData(batch_size=250))
    resumed = str(tmp_path / "first" / "epoch=29-step=90.ckpt")
    on = assert_fast_path_changes_nothing(tmp_path, MODELS[name], 250, ckpt_path=resumed, **MINI_BATCH)
    assert on["bulk"] == 24  # epochs 30 to 59 but the 6 observed


def test_min_epochs_outlasts_early_stopping():
    stopper = EarlyStopping(monitor="val/loss", patience=2, min_delta=10.0)
    trainer = quiet_trainer(max_epochs=1000, min_epochs=100, check_val_every_n_epoch=10, callbacks=[stopper])
    trainer.fit(Sequential(), BlobData())
    assert trainer.current_epoch == 100  # asked to stop at epoch 29, it trained on to min_epochs


@pytest.mark.parametrize("lr_scheduler", [None, STEP_LR])
def test_fast_path_changes_nothing_in_double_precision(tmp_path, lr_scheduler):
    on = assert_fast_path_changes_nothing(
        tmp_path, lambda: Sequential(lr_scheduler=lr_scheduler), None, precision="64-true", **FULL_BATCH
    )
    assert on["bulk"] > 60


# ---- The command line: every Trainer option at the top level, with Lightning's meaning ----


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


def run_dir(root: Path, name: str = "linear") -> Path:
    [folder] = (root / name).glob("version_*")
    return folder


def test_cli_max_epochs_check_val_and_a_csv_logger_without_save_dir(tmp_path):
    args = ["--max_epochs", "60", "--check_val_every_n_epoch", "20", "--logger", "CSVLogger", "--pictures", "false"]
    summaries = train(tmp_path, "--model", "linear", *args)
    assert summaries["linear"]["epochs"] == 60
    rows = metrics_rows(run_dir(tmp_path))  # under --default_root_dir, in the network's folder
    assert [int(row["epoch"]) for row in rows if row["train/loss"]] == list(range(60))
    assert [int(row["epoch"]) for row in rows if row["val/acc"]] == [19, 39, 59]
    assert float(rows[-1]["train/loss"]) == pytest.approx(summaries["linear"]["final_loss"])


def test_cli_one_callback(tmp_path):
    stop = ["--callbacks", "EarlyStopping", "--callbacks.monitor", "val/loss", "--callbacks.patience", "1"]
    args = ["--max_epochs", "1000", "--check_val_every_n_epoch", "10", *stop, "--callbacks.min_delta", "0.05"]
    summaries = train(tmp_path, "--model", "linear", "--pictures", "false", *args)
    assert summaries["linear"]["epochs"] == 20  # the validation of epoch 19 did not improve on epoch 9's


@pytest.mark.parametrize("form", ["--callbacks+", "--callbacks"])
def test_cli_two_callbacks(tmp_path, form):
    stop = [form, "EarlyStopping", "--callbacks.monitor", "val/loss", "--callbacks.patience", "1"]
    args = [*stop, "--callbacks.min_delta", "0.05", form, "LearningRateMonitor"]
    summaries = train(tmp_path, "--model", "linear", "--max_epochs", "1000", "--check_val_every_n_epoch", "10", *args)
    assert summaries["linear"]["epochs"] == 20
    rates = tensorboard_scalars(str(run_dir(tmp_path)))["lr-SGD"]
    assert rates == [(step, pytest.approx(0.2)) for step in range(20)]  # the monitor's point each epoch
    config = (run_dir(tmp_path) / "config.yaml").read_text()
    assert "callbacks.EarlyStopping" in config and "callbacks.LearningRateMonitor" in config


def test_cli_fast_dev_run_trains_one_step_and_writes_nothing(tmp_path, monkeypatch, capsys):
    summaries = []
    train_one = cli.train_one
    monkeypatch.setattr(cli, "train_one", lambda *args, **kw: summaries.append(train_one(*args, **kw)) or summaries[-1])
    assert cli.main(["--model", "linear", "--fast_dev_run", "true", "--default_root_dir", str(tmp_path)]) == 0
    [summary] = summaries
    assert summary["epochs"] == 1 and summary["final_loss"] == pytest.approx(summary["initial_loss"])
    assert list(tmp_path.iterdir()) == []  # as Lightning: no logs, no checkpoints
    assert "Traceback" not in capsys.readouterr().err


def test_cli_max_time_stops_the_fit(tmp_path):
    summaries = train(tmp_path, "--model", "linear", "--max_time", "00:00:00:02", "--max_epochs", "-1", "--pictures",
                      "false")  # fmt: skip
    assert 2.0 <= summaries["linear"]["fit_seconds"] < 5.0 and summaries["linear"]["epochs"] > 100


def test_cli_limit_train_batches_with_mini_batches(tmp_path):
    options = ["--data.batch_size", "64", "--limit_train_batches", "3", "--max_epochs", "4", "--logger", "CSVLogger"]
    summaries = train(tmp_path, "--model", "linear", "--pictures", "false", *options)
    assert summaries["linear"]["epochs"] == 4
    rows = [row for row in metrics_rows(run_dir(tmp_path)) if row["train/loss"]]
    assert [int(row["step"]) for row in rows] == [2, 5, 8, 11]  # three optimizer steps an epoch


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max_epochs", "-5"], "max_epochs"),
        (["--max_epohcs", "5"], "unrecognized option --max_epohcs; did you mean --max_epochs or"),
        (["--epochs", "5"], "--max_epochs"),
        (["--logger", "CSVLogger", "--logger.save_dir", "x"], "--default_root_dir"),
    ],
)
def test_cli_bad_trainer_options_are_one_line_and_status_2(tmp_path, capsys, args, message):
    assert cli.main(["--model", "linear", "--default_root_dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("train.py: error: ") and message in err
    assert list(tmp_path.iterdir()) == []


class Jittered(Sequential):
    """A network whose batches are augmented afresh each epoch, in a batch hook."""

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        x, y = batch
        return x + 0.01 * torch.randn_like(x), y


@pytest.mark.parametrize(
    ("make_model", "options"),
    [
        (Jittered, {}),
        (Sequential, {"gradient_clip_val": 0.01}),
        (Sequential, {"accumulate_grad_batches": 2}),
        (Sequential, {"precision": "bf16-mixed"}),
        (Sequential, {"profiler": "simple"}),
        (Sequential, {"callbacks": lambda: [LearningRateMonitor()]}),
    ],
    ids=["batch-hook", "clipping", "accumulation", "mixed-precision", "profiler", "lr-monitor"],
)
def test_fast_path_steps_aside_where_it_cannot_vouch(tmp_path, make_model, options):
    parameters = []
    for fast_path in (True, False):
        torch.manual_seed(1)  # the same random draws in both fits
        model = make_model()
        model.fast_path = fast_path
        bulk = counting_bulk_epochs(model)
        run_options = {
            **options,
            "callbacks": options.get("callbacks", list)(),
            "logger": CSVLogger(tmp_path / str(fast_path)),
        }
        quiet_trainer(max_epochs=30, check_val_every_n_epoch=100, **run_options).fit(model, BlobData())
        assert sum(bulk) == 0
        parameters.append(model.state_dict())
    assert_same(*parameters)
