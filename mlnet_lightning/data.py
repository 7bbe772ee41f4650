"""The tutorial's data, and the shapes it suggests next, as LightningDataModules of ready device tensors."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from sklearn.datasets import make_blobs, make_circles, make_moons
from sklearn.model_selection import train_test_split
from torch import Tensor


class EpochChunk:
    """Several training epochs handed to one `training_step` (the fast path of `TutorialModule`).

    Iterating over `epochs` and then `batches(order(epoch))` replays exactly what a plain loop does;
    the validation data rides along for the validations that fall inside the chunk.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        epochs: range,
        batch_size: int | None = None,
        seed: int = 0,
        val: tuple[Tensor, Tensor] | None = None,
        val_every: int = 0,
    ) -> None:
        self.x, self.y, self.epochs = x, y, epochs
        self.batch_size, self.seed = batch_size, seed
        self.val, self.val_every = val, val_every

    def validates_inside(self, epoch: int) -> bool:
        """Whether `epoch` ends with a validation inside the chunk; the chunk's last epoch is
        validated by the Trainer's own validation loop."""
        return self.val_every > 0 and (epoch + 1) % self.val_every == 0 and epoch != self.epochs[-1]

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None or self.batch_size >= len(self.x)

    @property
    def batches_per_epoch(self) -> int:
        return 1 if self.full_batch else -(-len(self.x) // self.batch_size)

    def order(self, epoch: int) -> Tensor | None:
        """The shuffled sample order of `epoch` (None for full batch); a pure function of seed and epoch,
        so a resumed run sees the same batches as an uninterrupted one."""
        if self.full_batch:
            return None
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.x), generator=generator).to(self.x.device)

    def batches(self, order: Tensor | None) -> Iterator[tuple[Tensor, Tensor]]:
        if order is None:
            yield self.x, self.y
            return
        for index in order.split(self.batch_size):
            yield self.x[index], self.y[index]


def process_share(x: Tensor, y: Tensor, rank: int, processes: int, equal: bool = False) -> tuple[Tensor, Tensor]:
    """Process `rank`'s slice of the points (x, y) in data-parallel training over `processes` processes.

    `equal` slices (for training) make every process take the same number of steps, and DDP's mean
    of the processes' gradients the gradient of the whole (mini-)batch; the few points left over when
    the points do not split evenly are left out. Otherwise slices may differ by one point (validation:
    its metrics sum over the processes).
    """
    if processes == 1:
        return x, y
    left_out = len(x) % processes if equal else 0
    if left_out:
        rank_zero_warn(f"{len(x)} points do not split evenly over {processes} processes: the last {left_out} left out")
    kept = len(x) - left_out
    return x[:kept].tensor_split(processes)[rank], y[:kept].tensor_split(processes)[rank]


class ChunkLoader:
    """Train loader of a fast module: one `EpochChunk` per Lightning epoch, sized from the Trainer's position."""

    def __init__(self, data: ClassificationData) -> None:
        self.data = data

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[EpochChunk]:
        data = self.data
        per_step = data.epochs_per_step
        first = data.trainer.current_epoch * per_step
        epochs = range(first, min(first + per_step, data.epochs))
        x, y = data.train_share
        yield EpochChunk(x, y, epochs, data.batch_size, data.seed, data.val_share, data.val_every)


class BatchLoader:
    """Plain loader of (x, y) mini-batches cut from device tensors, for any LightningModule."""

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int | None, seed: int, shuffle_epoch: Callable[[], int] | None = None
    ) -> None:
        """`shuffle_epoch` gives the epoch being trained, whose shuffle to use (None keeps the order): read
        when an epoch starts, so that a resumed fit shuffles each epoch as an uninterrupted one."""
        self.x, self.y, self.seed, self.shuffle_epoch = x, y, seed, shuffle_epoch
        self.batch_size = batch_size or len(x)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        chunk = EpochChunk(self.x, self.y, range(1), self.batch_size, self.seed)
        order = chunk.order(self.shuffle_epoch()) if self.shuffle_epoch else None
        yield from chunk.batches(order)


class ClassificationData(L.LightningDataModule):
    """Base of the 2-D classification data sets: a stratified 75/25 split held as tensors."""

    def __init__(
        self,
        batch_size: int | None = None,
        epochs: int = 10_000,
        val_every: int = 100,
        epochs_per_step: int | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            batch_size: mini-batch size; None trains on the full batch, as the tutorial does.
            epochs: passes over the training data (the command line's --epochs sets it).
            val_every: validate every this many epochs, and after the last.
            epochs_per_step: epochs that a fast module trains inside one Lightning step; the
                Trainer's epoch loop, checkpoints (last.ckpt and the best) and progress bar advance
                at this pace, so an interrupted run loses at most this many epochs. None picks the
                largest of 1000, 100, 10, 1 that keeps a step under 2 million samples.
            seed: seed of the data, the split and mini-batch shuffling.
        """
        super().__init__()
        # Into checkpoints (not the loggers: the model logs its own seed), so that
        # `BlobData.load_from_checkpoint` rebuilds the same split without the command.
        self.save_hyperparameters(logger=False)
        for name, value in {"batch_size": batch_size, "epochs": epochs, "epochs_per_step": epochs_per_step}.items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if val_every < 1:
            raise ValueError(f"val_every must be a positive integer, got {val_every}")
        self.batch_size, self.epochs, self.val_every, self.seed = batch_size, epochs, val_every, seed
        features, labels = self.make()
        x_train, x_val, y_train, y_val = train_test_split(features, labels, stratify=labels, random_state=seed)
        self.x_train, self.x_val = (torch.as_tensor(x, dtype=torch.float32) for x in (x_train, x_val))
        self.y_train, self.y_val = (torch.as_tensor(y, dtype=torch.int64) for y in (y_train, y_val))
        if epochs_per_step is None:
            fitting = (k for k in (1000, 100, 10) if k * len(self.x_train) <= 2_000_000)
            epochs_per_step = next(fitting, 1)
        self.epochs_per_step = epochs_per_step
        # What this process trains and validates on: all of it, unless training is data-parallel.
        self.train_share, self.val_share = (self.x_train, self.y_train), (self.x_val, self.y_val)

    def make(self):
        """Return (features, labels) as numpy arrays."""
        raise NotImplementedError

    @property
    def lightning_epochs(self) -> int:
        """The Trainer's max_epochs for a fast module: steps of `epochs_per_step` epochs."""
        return -(-self.epochs // self.epochs_per_step)

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_val]).max()) + 1

    def setup(self, stage: str) -> None:
        # Hold the data where the Trainer runs, so no step copies or collates it.
        device = self.trainer.strategy.root_device
        self.x_train, self.y_train, self.x_val, self.y_val = (
            t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val)
        )
        # Each DDP process trains and validates on its own share; the whole data stays (pictures draw it).
        rank, processes = self.trainer.global_rank, self.trainer.world_size
        self.train_share = process_share(self.x_train, self.y_train, rank, processes, equal=True)
        self.val_share = process_share(self.x_val, self.y_val, rank, processes)
        # Batches of a few hundred rows gain nothing from a second CPU thread, and lose up to 8x
        # whenever that thread must wait for a core (measured: 0.75 against 4-6 ms an epoch).
        self._threads = torch.get_num_threads()
        if device.type == "cpu" and min(self.batch_size or len(self.x_train), len(self.x_train)) < 4096:
            torch.set_num_threads(1)

    def teardown(self, stage: str) -> None:
        torch.set_num_threads(self._threads)

    def train_dataloader(self) -> ChunkLoader | BatchLoader:
        if getattr(self.trainer.lightning_module, "trains_epoch_chunks", False):
            return ChunkLoader(self)
        return BatchLoader(*self.train_share, self.batch_size, self.seed, lambda: self.trainer.current_epoch)

    def val_dataloader(self) -> BatchLoader:
        return BatchLoader(*self.val_share, None, self.seed)


class BlobData(ClassificationData):
    """`make_blobs`: the tutorial's four Gaussian blobs in 2-D."""

    def __init__(self, n_samples: int = 1000, centers: int = 4, cluster_std: float = 1.0, **kwargs) -> None:
        """
        Args:
            n_samples: points in all, before the 75/25 split.
            centers: blobs, one class each.
            cluster_std: standard deviation of each blob.
        """
        self.n_samples, self.centers, self.cluster_std = n_samples, centers, cluster_std
        super().__init__(**kwargs)

    def make(self):
        return make_blobs(
            n_samples=self.n_samples,
            centers=self.centers,
            n_features=2,
            cluster_std=self.cluster_std,
            random_state=self.seed,
        )


class NoisyShapeData(ClassificationData):
    """Base of scikit-learn's 2-D shapes that take Gaussian `noise`: moons and circles."""

    def __init__(self, n_samples: int = 1000, noise: float = 0.0, **kwargs) -> None:
        """
        Args:
            n_samples: points in all, before the 75/25 split.
            noise: standard deviation of the Gaussian noise added to every point.
        """
        if not noise >= 0:
            raise ValueError(f"noise must be a non-negative number, got {noise}")
        self.n_samples, self.noise = n_samples, noise
        super().__init__(**kwargs)


class MoonsData(NoisyShapeData):
    """`make_moons`: two interleaving half circles, the tutorial's suggested data that no line separates."""

    def make(self):
        return make_moons(n_samples=self.n_samples, noise=self.noise, random_state=self.seed)


class CirclesData(NoisyShapeData):
    """`make_circles`: a small circle inside a large one."""

    def __init__(self, factor: float = 0.5, **kwargs) -> None:
        """
        Args:
            factor: radius of the inner circle relative to the outer one, between 0 and 1.
        """
        if not 0 < factor < 1:
            raise ValueError(f"factor must be between 0 and 1, got {factor}")
        self.factor = factor
        super().__init__(**kwargs)

    def make(self):
        return make_circles(n_samples=self.n_samples, noise=self.noise, factor=self.factor, random_state=self.seed)
