"""The fast path's correctness: epochs, steps, logged points and checkpoints; the graph replay logic."""

import pytest

from mlnet_lightning.baseline import fit_tutorial
from mlnet_lightning.data import BlobData
from tests.test_tutorial import fit_lightning


@pytest.mark.parametrize("name", ["scratch", "parameter", "sequential"])
def test_replayed_epochs_follow_the_plain_loop(name):
    """The CUDA-graph path's step (static buffers, device-side index), run eagerly on the CPU."""
    data = BlobData()
    plain = fit_tutorial(name, data.x_train, data.y_train, data.x_val, data.y_val, epochs=250)
    model, trainer = fit_lightning(name, epochs=250, epochs_per_step=100, replay_epochs=True)
    assert model._replayer is not None and model._replayer.epochs_run == 250
    assert model.history["initial_loss"] == pytest.approx(plain.losses[0], abs=1e-6)
    assert model.history["train/loss"] == pytest.approx(plain.losses[-1], abs=1e-6)
    assert model.history["train/acc"] == pytest.approx(plain.train_accs[-1], abs=1e-6)
    assert model.history["val/acc"] == pytest.approx(plain.val_acc, abs=1e-6)


def test_chunks_count_epochs_and_steps_like_a_plain_loop():
    model, trainer = fit_lightning("linear", epochs=2500, epochs_per_step=1000)
    assert trainer.current_epoch == 3  # Lightning epochs: chunks of 1000, 1000 and 500
    assert trainer.global_step == 2500  # one optimizer step per full-batch epoch
    assert model.history["epoch"] == 2499
    model, trainer = fit_lightning("linear", epochs=20, epochs_per_step=10, batch_size=100)
    assert trainer.global_step == 20 * 8


def test_early_stopping_on_val_loss_stops_between_chunks(tmp_path):
    from tests.conftest import train

    options = ["--callbacks", "EarlyStopping", "--callbacks.monitor", "val/loss", "--callbacks.patience", "1"]
    summary = train(tmp_path, "--model", "linear", "--epochs", "3000", *options, "--callbacks.min_delta", "0.5")
    assert summary["linear"]["epochs"] == 2000  # the second chunk did not improve val/loss by 0.5


def test_callbacks_see_torchmetrics_train_accuracy_equal_to_the_curve():
    model, trainer = fit_lightning("sequential", epochs=300, epochs_per_step=100)
    assert float(trainer.callback_metrics["train/acc"]) == pytest.approx(model.history["train/acc"], abs=1e-7)
