"""The five networks against the tutorial's numbers and an independent plain PyTorch loop."""

import shlex
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from tensorboard import program
from tensorboard.backend.event_processing.data_ingester import LocalDataIngester
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.context import RequestContext
from tensorboard.data.provider import RunTagFilter

from mlnet_lightning.baseline import fit_plain, fit_tutorial, hand_cross_entropy, tutorial_network
from mlnet_lightning.data import BlobData
from mlnet_lightning.models import TUTORIAL_MODELS
from mlnet_lightning.reference import LOGITS_FIX, TUTORIAL
from tests.conftest import ROOT, train

SUMMARY_KEYS = {"model", "epochs", "initial_loss", "final_loss", "train_acc", "val_acc", "fit_seconds", "device"}


@pytest.mark.parametrize("name", TUTORIAL_MODELS)
def test_default_command_reproduces_the_tutorial(tutorial_runs, name):
    summary = tutorial_runs[1][name]
    assert set(summary) == SUMMARY_KEYS
    assert summary["epochs"] == 10_000 and summary["device"] == "cpu"
    expected = TUTORIAL[name]
    assert summary["initial_loss"] == pytest.approx(expected["initial_loss"], abs=1e-5)
    assert summary["final_loss"] == pytest.approx(expected["final_loss"], abs=1e-5)
    assert summary["train_acc"] == pytest.approx(expected["train_acc"], abs=1e-3)
    assert summary["val_acc"] == pytest.approx(expected["val_acc"], abs=1e-3)


class Points(Logger):
    """A logger that keeps every point it is given: name -> [(step, value), ...]."""

    name = "points"
    version = 0

    def __init__(self) -> None:
        super().__init__()
        self.points: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.points[key].append((step, float(value)))

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass


def fit_module(
    model: L.LightningModule,
    epochs: int,
    batch_size: int | None = None,
    val_every: int | None = None,
    logger: Logger | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> L.Trainer:
    """Fit as a Lightning user would, on the tutorial's blobs, validating every `val_every` epochs
    (default: after the last only); the logger (default: a `Points`) gets the points."""
    trainer = L.Trainer(
        max_epochs=epochs,
        check_val_every_n_epoch=val_every or epochs,
        accelerator="cpu",
        logger=logger or Points(),
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=BlobData(batch_size=batch_size))
    return trainer


def fit_lightning(
    name: str, epochs: int, batch_size: int | None = None, val_every: int | None = None, **options
) -> tuple[L.LightningModule, L.Trainer]:
    """Fit a tutorial network made with `options` (see fit_module)."""
    model = TUTORIAL_MODELS[name](**options)
    return model, fit_module(model, epochs, batch_size, val_every)


def final_numbers(trainer: L.Trainer) -> dict[str, float]:
    """The loss of the first epoch (before any update), and the last epoch's loss and accuracies."""
    numbers = {key: float(trainer.callback_metrics[key]) for key in ("train/loss", "train/acc", "val/acc")}
    return {"initial_loss": trainer.logger.points["train/loss"][0][1], **numbers}


@pytest.mark.parametrize("name", TUTORIAL_MODELS)
@pytest.mark.parametrize("logits", [False, True])
def test_trainer_follows_the_plain_loop(name, logits):
    """Same trajectory as the tutorial's loop, written independently in mlnet_lightning.baseline; the
    validations every 75 epochs make the fast path train in bulks between Lightning's own epochs."""
    data = BlobData()
    plain = fit_tutorial(name, data.x_train, data.y_train, data.x_val, data.y_val, epochs=300, logits=logits)
    _, trainer = fit_lightning(name, epochs=300, logits=logits, val_every=75)
    assert trainer.current_epoch == trainer.global_step == 300
    numbers = final_numbers(trainer)
    assert numbers["initial_loss"] == pytest.approx(plain.losses[0], abs=1e-6)
    assert numbers["train/loss"] == pytest.approx(plain.losses[-1], abs=1e-6)
    assert numbers["train/acc"] == pytest.approx(plain.train_accs[-1], abs=1e-6)
    assert numbers["val/acc"] == pytest.approx(plain.val_acc, abs=1e-6)
    losses = trainer.logger.points["train/loss"]
    assert [step for step, _ in losses] == list(range(300))
    assert [loss for _, loss in losses] == pytest.approx(plain.losses, abs=1e-6)


def test_logits_switch_fixes_the_double_softmax(tmp_path):
    summary = train(tmp_path, "--model", "sequential", "--logits", "true")["sequential"]
    assert summary["final_loss"] == pytest.approx(LOGITS_FIX["final_loss"], abs=1e-4)
    assert summary["val_acc"] == pytest.approx(LOGITS_FIX["val_acc"], abs=1e-3)


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_has_a_point_per_epoch(tmp_path):
    train(tmp_path, "--model", "linear", "--max_epochs", "250", "--check_val_every_n_epoch", "1")
    scalars = read_scalars(tmp_path / "linear" / "version_0")
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert [step for step, _ in scalars[tag]] == list(range(250)), tag


def tensorboard_points(root: Path, argv: list[str]) -> list[int]:
    """The steps of sequential's train/loss as a TensorBoard started with `argv` serves them (its own flags,
    ingestion and data provider; loaded once, in this thread)."""
    board = program.TensorBoard()
    board.configure(argv=["tensorboard", *argv, "--reload_interval", "0", "--reload_task", "blocking"])
    ingester = LocalDataIngester(board.flags)
    ingester.start()
    served = ingester.data_provider.read_scalars(
        RequestContext(),
        experiment_id="",
        plugin_name="scalars",
        downsample=board.flags.samples_per_plugin.get("scalars", 1000),  # the scalars plugin's own default
        run_tag_filter=RunTagFilter(tags=["train/loss"]),
    )
    return [datum.step for datum in served["sequential/version_0"]["train/loss"]]


def test_the_readmes_tensorboard_command_shows_every_point(tutorial_runs):
    root, _ = tutorial_runs
    lines = (ROOT / "README.md").read_text().splitlines()
    command = next(line for line in lines if line.startswith(".venv/bin/tensorboard --logdir lightning_logs"))
    argv = shlex.split(command)[1:]
    argv[argv.index("--logdir") + 1] = str(root)
    assert tensorboard_points(root, argv) == list(range(10_000))
    assert len(tensorboard_points(root, ["--logdir", str(root)])) == 1000  # what TensorBoard shows by default


def test_validation_points_every_check_val_every_n_epoch_epochs(tutorial_runs):
    root, summaries = tutorial_runs
    scalars = read_scalars(root / "sequential" / "version_0")
    assert [step for step, _ in scalars["train/loss"]] == list(range(10_000))
    assert [step for step, _ in scalars["val/acc"]] == list(range(999, 10_000, 1000))  # ten, by default
    assert scalars["train/loss"][0][1] == pytest.approx(summaries["sequential"]["initial_loss"])
    assert scalars["val/acc"][-1][1] == pytest.approx(summaries["sequential"]["val_acc"])


@pytest.mark.parametrize("name", ["scratch", "sequential"])
def test_mini_batches_follow_the_plain_loop(name):
    data = BlobData()
    net, update = tutorial_network(name)
    optimizer = None if update == "by hand" else torch.optim.SGD(net.parameters(), lr=0.2)
    loss_fn = hand_cross_entropy if name == "scratch" else F.cross_entropy
    plain = fit_plain(net, loss_fn, optimizer, data.x_train, data.y_train, data.x_val, data.y_val, 30, batch_size=64)
    _, trainer = fit_lightning(name, epochs=30, batch_size=64)
    assert trainer.global_step == 30 * 12  # 750 points: 11 batches of 64 and one of 46 an epoch
    numbers = final_numbers(trainer)
    assert numbers["initial_loss"] == pytest.approx(plain.losses[0], abs=1e-5)
    assert numbers["train/loss"] == pytest.approx(plain.losses[-1], abs=1e-5)
    assert numbers["train/acc"] == pytest.approx(plain.train_accs[-1], abs=1e-6)
    assert numbers["val/acc"] == pytest.approx(plain.val_acc, abs=1e-6)


def test_the_summarys_losses_are_the_first_and_last_points_of_train_loss_with_mini_batches(tmp_path):
    """As with the full batch: epoch 0's and the last epoch's means over their batches, as the plain mini-batch
    loop records them and TensorBoard shows them."""
    data = BlobData()
    net, _ = tutorial_network("sequential")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
    plain = fit_plain(net, F.cross_entropy, optimizer, data.x_train, data.y_train, data.x_val, data.y_val, 30,
                      batch_size=64)  # fmt: skip
    summary = train(tmp_path, "--model", "sequential", "--data.batch_size", "64", "--max_epochs", "30")["sequential"]
    scalars = read_scalars(tmp_path / "sequential" / "version_0")
    assert [step for step, _ in scalars["train/loss"]] == list(range(11, 30 * 12, 12))  # an epoch's last step
    assert summary["initial_loss"] == pytest.approx(plain.losses[0], abs=1e-5) == scalars["train/loss"][0][1]
    assert summary["final_loss"] == pytest.approx(plain.losses[-1], abs=1e-5) == scalars["train/loss"][-1][1]
