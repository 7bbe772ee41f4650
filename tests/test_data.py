import re

import pytest
import torch

from mlnet_lightning.data import BlobData, CirclesData, MoonsData, TensorBatches


def test_blobs_are_the_tutorials_split():
    data = BlobData()
    assert data.x_train.shape == (750, 2) and data.x_val.shape == (250, 2)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert torch.bincount(data.y_train).tolist() == [187, 187, 188, 188]
    assert torch.bincount(data.y_val).tolist() == [63, 63, 62, 62]
    assert (data.num_features, data.num_classes) == (2, 4)


def test_mini_batches_cover_every_point_once_per_epoch():
    data = BlobData(batch_size=64)
    epoch = 0
    loader = TensorBatches(data.x_train, torch.arange(750), batch_size=64, seed=0, epoch=lambda: epoch)
    assert not loader.full_batch and len(loader) == 12
    orders = []
    for epoch in (0, 1, 0):  # noqa: B007 (read by the loader)
        batches = list(loader)
        assert [len(y) for _, y in batches] == [64] * 11 + [46]
        orders.append(torch.cat([y for _, y in batches]))
        assert torch.equal(torch.sort(orders[-1]).values, torch.arange(750))
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(orders[0], orders[2])  # a pure function of seed and epoch: resumable


def test_a_full_batch_is_the_same_tensors_every_epoch():
    data = BlobData()
    loader = TensorBatches(data.x_train, data.y_train)
    assert loader.full_batch and len(loader) == 1 and data.batch_size == 750
    ((x, y),) = list(loader)
    assert x is data.x_train and y is data.y_train


@pytest.mark.parametrize(
    ("data_class", "options", "message"),
    [
        (BlobData, {"n_samples": 12}, "n_samples 12: the 75/25 split needs a point of each of the 4 classes"),
        (BlobData, {"n_samples": 8, "centers": 3}, "3 classes in both training and validation, so at least 9 points"),
        (MoonsData, {"n_samples": 4}, "at least 5 points; 4 give 3 training and 1 validation points"),
        (CirclesData, {"n_samples": 4, "test_size": 100}, "(the test split, test_size 100, is drawn apart)"),
        (BlobData, {"n_samples": 0}, "n_samples must be a positive integer, got 0"),
        (BlobData, {"n_samples": 10**12}, "n_samples 1000000000000: drawing 1000000000000 points needs about 100 TB"),
        (MoonsData, {"test_size": 10**12}, "n_samples 1000 and test_size 1000000000000: drawing"),
        (BlobData, {"seed": 2**32}, "seed must be between 0 and 2**32 - 1 = 4294967295"),
        (BlobData, {"seed": -1}, "got -1"),
    ],
)
def test_a_data_set_that_cannot_be_made_is_a_value_error_naming_the_argument(data_class, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        data_class(**options)


@pytest.mark.parametrize(
    ("data_class", "options", "sizes"),
    [(BlobData, {"n_samples": 13}, (9, 4)), (BlobData, {"n_samples": 9, "centers": 3}, (6, 3)),
     (MoonsData, {"n_samples": 5}, (3, 2)), (BlobData, {"seed": 2**32 - 1}, (750, 250))],
)  # fmt: skip
def test_the_smallest_data_sets_split(data_class, options, sizes):
    data = data_class(**options)
    assert (len(data.x_train), len(data.x_val)) == sizes
    assert set(data.y_train.tolist()) == set(data.y_val.tolist())


@pytest.mark.parametrize("data_class", [BlobData, MoonsData, CirclesData])
def test_a_data_module_works_without_a_trainer_and_changes_nothing_else(data_class):
    """As a notebook uses one: setup, the four stages' loaders, the sizes; the thread count untouched."""
    threads = torch.get_num_threads()
    data = data_class(batch_size=100)
    data.setup("fit")
    seen = torch.cat([y for _, y in data.train_dataloader()])
    assert torch.equal(torch.sort(seen).values, torch.sort(data.y_train).values)  # every point once
    for loader in (data.val_dataloader(), data.test_dataloader()):
        assert sum(len(y) for _, y in loader) == len(data.y_val)
    assert sum(len(x) for x in data.predict_dataloader()) == len(data.y_val)  # points only
    assert (data.num_features, data.num_classes) == (2, len(torch.unique(data.y_train)))
    assert torch.get_num_threads() == threads
    data.teardown("fit")
    assert torch.get_num_threads() == threads
