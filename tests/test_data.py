import torch

from mlnet_lightning.data import BlobData, TensorBatches


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
