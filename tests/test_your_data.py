"""Tensors of one's own, brought as a Lightning user brings them: a DataLoader, or the project's loader of
tensors for the fast path. The same numbers either way, and no thread count or random state left changed."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mlnet_lightning.data import BlobData, TensorBatches
from mlnet_lightning.models import MODELS, Sequential, Wrapped
from tests.test_lightning_native import assert_same, counting_bulk_epochs


class ThreadsSeen(L.Callback):
    """The CPU threads each training epoch ran on."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.add(torch.get_num_threads())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # before the fit's first batch, which the threads are chosen at
            self.seen.add(torch.get_num_threads())


def fit(tmp_path, loaders: dict, callbacks: list) -> tuple[dict, int]:
    model = Sequential(logits=True)
    bulk = counting_bulk_epochs(model)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=300, check_val_every_n_epoch=100, default_root_dir=tmp_path, callbacks=callbacks
    )
    trainer.fit(model, **loaders)
    return model.state_dict(), sum(bulk)


def test_your_tensors_train_the_same_through_a_dataloader_or_tensorbatches(tmp_path):
    data = BlobData()
    (x, y), validation = (data.x_train, data.y_train), (data.x_val, data.y_val)
    dataloader = {
        "train_dataloaders": DataLoader(TensorDataset(x, y), batch_size=750),
        "val_dataloaders": DataLoader(TensorDataset(*validation), batch_size=250),
    }
    tensors = {"train_dataloaders": TensorBatches(x, y), "val_dataloaders": TensorBatches(*validation)}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as Python starts on this machine (the tests' own loops run on one)
    try:
        seen = ThreadsSeen()
        through_dataloader, dataloader_bulk = fit(tmp_path / "dataloader", dataloader, [seen])
        assert seen.seen == {1} and torch.get_num_threads() == 2  # one thread for the fit, given back at its end
        through_tensors, tensors_bulk = fit(tmp_path / "tensors", tensors, [])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert dataloader_bulk == 0 and tensors_bulk > 290  # TensorBatches: the fast path
    assert_same(through_dataloader, through_tensors, "parameters")


@pytest.mark.parametrize("loader", [TensorBatches, lambda x, y, size: DataLoader(TensorDataset(x, y), size)])
def test_batches_of_4096_train_and_validate_on_every_thread_to_the_end(tmp_path, loader):
    """One thread is for small batches: an epoch's smaller last batch does not take the other threads away."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2 * 4096 + 100, 2, generator=generator), torch.randint(0, 4, (2 * 4096 + 100,))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = ThreadsSeen()
        trainer = L.Trainer(accelerator="cpu", max_epochs=3, default_root_dir=tmp_path, callbacks=[seen])
        trainer.fit(Sequential(logits=True), loader(x, y, 4096), loader(x, y, 4096))
    finally:
        torch.set_num_threads(threads)
    assert trainer.global_step == 9 and seen.seen == {2}


@pytest.mark.parametrize("name", [*MODELS, "wrapped"])
def test_making_a_network_leaves_the_callers_random_numbers_alone(name):
    """A network seeds its own parameters, as the tutorial does, without reseeding the caller's draws."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    network = Wrapped("torch.nn.Linear", {"in_features": 2, "out_features": 4}) if name == "wrapped" else MODELS[name]()
    assert torch.equal(torch.rand(3), expected)
    again = Wrapped("torch.nn.Linear", {"in_features": 2, "out_features": 4}) if name == "wrapped" else MODELS[name]()
    assert_same(network.state_dict(), again.state_dict(), "parameters")  # still its seed's
