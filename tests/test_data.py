import torch

from mlnet_lightning.data import BlobData, EpochChunk


def test_blobs_are_the_tutorials_split():
    data = BlobData()
    assert data.x_train.shape == (750, 2) and data.x_val.shape == (250, 2)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert torch.bincount(data.y_train).tolist() == [187, 187, 188, 188]
    assert torch.bincount(data.y_val).tolist() == [63, 63, 62, 62]
    assert (data.num_features, data.num_classes) == (2, 4)


def test_chunk_size_follows_data_size():
    assert BlobData().epochs_per_step == 1000
    assert BlobData(n_samples=40_000).epochs_per_step == 10
    assert BlobData(epochs=250).lightning_epochs == 1
    assert BlobData(epochs=2500, epochs_per_step=1000).lightning_epochs == 3


def test_mini_batches_cover_every_point_once_per_epoch():
    data = BlobData(batch_size=64)
    chunk = EpochChunk(data.x_train, data.y_train, range(2), batch_size=64, seed=0)
    orders = [chunk.order(epoch) for epoch in chunk.epochs]
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(orders[0], chunk.order(0))  # a pure function of seed and epoch: resumable
    batches = list(chunk.batches(orders[0]))
    assert [len(y) for _, y in batches] == [64] * 11 + [46]
    assert torch.equal(torch.sort(torch.cat([y for _, y in batches])).values, torch.sort(data.y_train).values)


def test_validation_inside_a_chunk_leaves_its_end_to_the_trainer():
    chunk = EpochChunk(torch.zeros(1, 2), torch.zeros(1), range(1000, 2000), val_every=100)
    inside = [epoch for epoch in chunk.epochs if chunk.validates_inside(epoch)]
    assert inside == list(range(1099, 1999, 100))
