"""The fast path's correctness: epochs, steps, logged points and checkpoints; the graph replay logic."""

import os

import pytest
import torch
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_crc

from mlnet_lightning.baseline import fit_tutorial
from mlnet_lightning.data import BlobData
from mlnet_lightning.models.base import descend, is_plain_sgd
from mlnet_lightning.points import masked_crc32c
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


MOMENTUM = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.2, "momentum": 0.9}}


def sgd_on_copies(**options):
    torch.manual_seed(0)
    params = [torch.randn(3, 2, requires_grad=True), torch.randn(2, requires_grad=True)]
    for param in params:
        param.grad = torch.randn_like(param)
    return torch.optim.SGD(params, lr=0.2, **options)


def test_descend_is_sgd_step_bitwise():
    stepped, descended = sgd_on_copies(), sgd_on_copies()
    stepped.step()
    stepped.zero_grad()
    descend(descended)
    for a, b in zip(stepped.param_groups[0]["params"], descended.param_groups[0]["params"]):
        assert torch.equal(a, b) and b.grad is None


def test_descend_only_where_sgd_is_plain():
    assert is_plain_sgd(sgd_on_copies())
    assert not is_plain_sgd(sgd_on_copies(momentum=0.9))
    assert not is_plain_sgd(sgd_on_copies(weight_decay=0.1))
    hooked = sgd_on_copies()
    hooked.register_step_post_hook(lambda *args: None)
    assert not is_plain_sgd(hooked)
    assert not is_plain_sgd(torch.optim.Adam(sgd_on_copies().param_groups[0]["params"]))
    assert fit_lightning("sequential", epochs=10)[0].descends
    assert not fit_lightning("sequential", epochs=10, optimizer=MOMENTUM)[0].descends


def test_checksums_of_a_chunk_are_tensorboards():
    records = [os.urandom(n) for n in (0, 1, 8, 8, 41, 41, 57, 300)]
    assert masked_crc32c(records) == [tensorboard_crc(record) for record in records]
