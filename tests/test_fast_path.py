"""The fast path's correctness at its edges: early stopping, the metrics callbacks see, plain SGD, checksums."""

import os

import pytest
import torch
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_crc

from mlnet_lightning.fastpath.events import encode_events, masked_crc32c
from mlnet_lightning.fastpath.updates import descend, is_plain_sgd
from tests.conftest import train
from tests.test_tutorial import fit_lightning


def test_early_stopping_on_val_loss_stops_at_the_validation_that_did_not_improve(tmp_path):
    options = ["--callbacks", "EarlyStopping", "--callbacks.monitor", "val/loss", "--callbacks.patience", "1"]
    summary = train(tmp_path, "--model", "linear", "--max_epochs", "3000", *options, "--callbacks.min_delta", "0.5")
    assert summary["linear"]["epochs"] == 200  # the second validation (epoch 199) did not improve val/loss by 0.5


def test_callbacks_see_torchmetrics_train_accuracy_equal_to_the_curve():
    _, trainer = fit_lightning("sequential", epochs=300, val_every=100)
    accuracies = trainer.logger.points["train/acc"]
    assert [step for step, _ in accuracies] == list(range(300))
    assert float(trainer.callback_metrics["train/acc"]) == pytest.approx(accuracies[-1][1], abs=1e-7)


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
    assert is_plain_sgd(fit_lightning("sequential", epochs=10)[1].optimizers[0])
    assert not is_plain_sgd(fit_lightning("sequential", epochs=10, optimizer=MOMENTUM)[1].optimizers[0])


def test_checksums_of_a_bulk_are_tensorboards():
    records = [os.urandom(n) for n in (0, 1, 8, 8, 41, 41, 57, 300)]
    assert masked_crc32c(records) == [tensorboard_crc(record) for record in records]


def test_events_of_a_bulk_are_the_bytes_protobuf_writes():
    """Steps around each varint length (0 is left out, as proto3 does), float32 rounding, a value beyond
    float32 (infinite, as protobuf stores it), negative numbers and an integer column (`epoch`)."""
    steps = [0, 1, 127, 128, 16_383, 16_384, 2**31 + 5, 2**40]
    columns = {
        "train/loss": [1.3951604366, 0.1, 1e-45, 3.0e39, -2.5, 0.0, 7.0, 1 / 3],
        "epoch": [float(step) for step in steps],
        "a much longer name of a metric, to pass 127 bytes of value" * 3: [0.5] * len(steps),
    }
    wall_time = 1795950000.123456
    expected = []
    for i, step in enumerate(steps):
        values = [Summary.Value(tag=name, simple_value=column[i]) for name, column in columns.items()]
        expected.append(Event(wall_time=wall_time, step=step, summary=Summary(value=values)).SerializeToString())
    assert encode_events(wall_time, steps, columns) == expected
