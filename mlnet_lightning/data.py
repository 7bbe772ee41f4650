"""The tutorial's data, and the shapes it suggests next, as LightningDataModules of ready device tensors."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from sklearn.datasets import make_blobs, make_circles, make_moons
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import TensorDataset

from mlnet_lightning.seeds import free_memory, human_bytes

# The memory drawing a data set takes at its peak, a point (maxrss for 10**7 points: 99 B for BlobData,
# 100 B for MoonsData): scikit-learn's float64 points and int64 labels, their shuffled and split copies,
# the split's index arrays, then the float32 tensors. A test split is drawn while the others are held.
BYTES_PER_POINT = 100
# np.random.RandomState's seeds.
MAX_SEED = 2**32 - 1
# The tutorial's split: a quarter of the points held out for validation (train_test_split's default).
VAL_FRACTION = 0.25


def shuffled_order(size: int, seed: int, epoch: int) -> Tensor:
    """The sample order of a mini-batch epoch: a pure function of seed and epoch, so that a resumed run
    sees the same batches as an uninterrupted one."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator)


class TensorBatches:
    """A loader of (x, y) batches cut from tensors already on the device: what a DataLoader over a
    TensorDataset yields, without collating a batch item by item (2.3 ms for the tutorial's 750 points).

    Full batch (`batch_size` None or at least the number of points) yields the same tensors every epoch;
    mini-batches are shuffled anew each epoch when `epoch` (the epoch being trained) is given."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor | None,
        batch_size: int | None = None,
        seed: int = 0,
        epoch: Callable[[], int] | None = None,
    ) -> None:
        self.x, self.y, self.seed, self.epoch = x, y, seed, epoch
        self.batch_size = min(batch_size or len(x), len(x))
        # What Lightning's batch-size tuner reads: the number of points.
        self.dataset = TensorDataset(x) if y is None else TensorDataset(x, y)

    @property
    def full_batch(self) -> bool:
        """Whether every epoch is the same single batch (the fast path trains such epochs in bulk)."""
        return self.batch_size >= len(self.x)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor] | Tensor]:
        if self.full_batch:
            yield self.x if self.y is None else (self.x, self.y)
            return
        order = None
        if self.epoch is not None:
            order = shuffled_order(len(self.x), self.seed, self.epoch()).to(self.x.device)
        for start in range(0, len(self.x), self.batch_size):
            index = slice(start, start + self.batch_size) if order is None else order[start : start + self.batch_size]
            yield self.x[index] if self.y is None else (self.x[index], self.y[index])


def process_share(x: Tensor, y: Tensor, rank: int, processes: int, equal: bool = False) -> tuple[Tensor, Tensor]:
    """Process `rank`'s slice of the points (x, y) in data-parallel training over `processes` processes.

    `equal` slices (for training) make every process take the same number of steps, and DDP's mean
    of the processes' gradients the gradient of the whole (mini-)batch; the few points left over when
    the points do not split evenly are left out. Otherwise slices may differ by one point (evaluation:
    its metrics sum over the processes).
    """
    if processes == 1:
        return x, y
    left_out = len(x) % processes if equal else 0
    if left_out:
        rank_zero_warn(f"{len(x)} points do not split evenly over {processes} processes: the last {left_out} left out")
    kept = len(x) - left_out
    return x[:kept].tensor_split(processes)[rank], y[:kept].tensor_split(processes)[rank]


def check_fits_in_memory(n_samples: int, test_size: int) -> None:
    """Refuse, before drawing any, points that would not fit in the memory the system has available
    (a run that swaps would crawl, or numpy would fail midway)."""
    need = BYTES_PER_POINT * (n_samples + test_size)
    available = free_memory(torch.device("cpu"))
    if need > available:
        asked = f"n_samples {n_samples}" + (f" and test_size {test_size}" if test_size else "")
        raise ValueError(
            f"{asked}: drawing {n_samples + test_size} points needs about {human_bytes(need)} of memory, more "
            f"than the {human_bytes(available)} available: give at most {available // BYTES_PER_POINT} points in all"
        )


def check_splittable(labels: np.ndarray, test_size: int) -> None:
    """Refuse points too few for the tutorial's stratified 75/25 split, which puts every class in both
    the training and the validation points (a test split of `test_size` points is drawn apart)."""
    counts = np.unique(labels, return_counts=True)[1]
    n_samples, classes = len(labels), len(counts)
    val = math.ceil(VAL_FRACTION * n_samples)
    train = n_samples - val
    if min(train, val) < classes or counts.min() < 2:
        # The fewest points that split so when the classes are drawn equally, as scikit-learn's shapes are.
        least = max(4 * classes - 3, 2 * classes)
        apart = f" (the test split, test_size {test_size}, is drawn apart)" if test_size else ""
        raise ValueError(
            f"n_samples {n_samples}: the 75/25 split needs a point of each of the {classes} classes in both "
            f"training and validation, so at least {least} points; {n_samples} give {train} training and "
            f"{val} validation points{apart}"
        )


class ClassificationData(L.LightningDataModule):
    """The 2-D classification data sets (--data BlobData, MoonsData, CirclesData; --data.help NAME for each).

    The tutorial's stratified 75/25 split, held as tensors, with loaders for all four stages. Testing and
    predicting use the held-out 25% unless `test_size` asks for a separate test split."""

    def __init__(self, batch_size: int | None = None, test_size: int = 0, seed: int = 0) -> None:
        """
        Args:
            batch_size: mini-batch size; None trains on the full batch, as the tutorial does.
            test_size: points of a separate test split, drawn from the same distribution after the
                others; 0 (the tutorial's way) tests on the held-out 25%.
            seed: seed of the data, the splits and mini-batch shuffling.
        """
        super().__init__()
        # Into checkpoints (not the loggers: the model logs its own seed), so that
        # `BlobData.load_from_checkpoint` rebuilds the same split without the command.
        self.save_hyperparameters(logger=False)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if test_size < 0:
            raise ValueError(f"test_size must be a non-negative integer, got {test_size}")
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and 2**32 - 1 = {MAX_SEED} (numpy's RandomState), got {seed}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {self.n_samples}")
        check_fits_in_memory(self.n_samples, test_size)
        self.seed = seed
        # One stream draws the tutorial's points, then the test split's: the tutorial's split and numbers
        # stay the same whatever test_size is.
        random_state = np.random.RandomState(seed)
        features, labels = self.make(self.n_samples, random_state)
        check_splittable(labels, test_size)
        x_train, x_val, y_train, y_val = train_test_split(
            features, labels, test_size=VAL_FRACTION, stratify=labels, random_state=seed
        )
        self.x_train, self.x_val = (torch.as_tensor(x, dtype=torch.float32) for x in (x_train, x_val))
        self.y_train, self.y_val = (torch.as_tensor(y, dtype=torch.int64) for y in (y_train, y_val))
        if test_size:
            x_test, y_test = self.make(test_size, random_state)
            self.x_test = torch.as_tensor(x_test, dtype=torch.float32)
            self.y_test = torch.as_tensor(y_test, dtype=torch.int64)
        else:
            self.x_test, self.y_test = self.x_val, self.y_val
        # Lightning's batch-size tuner reads and sets this attribute, so it holds a number: all the points.
        self.batch_size = batch_size or len(self.x_train)
        # What this process uses of each split: all of it, unless training is data-parallel.
        self.shares = {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val)}
        self.shares["test"] = (self.x_test, self.y_test)

    def make(self, n_samples: int, random_state: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        """Return (features, labels) of `n_samples` points drawn with `random_state`; called again with the
        same generator for a test split, which must come from the same distribution."""
        raise NotImplementedError

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_val]).max()) + 1

    def setup(self, stage: str) -> None:
        # Hold the data where the Trainer runs, so no step copies or collates it (without one: on the CPU,
        # all of it, as a notebook's `data.setup("fit")` before any fit expects).
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test = (
            t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test)
        )
        splits = {
            "train": (self.x_train, self.y_train),
            "val": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test),
        }
        # Each DDP process uses its own share; the whole data stays (pictures draw it).
        rank, processes = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.shares = {name: process_share(*xy, rank, processes, equal=name == "train") for name, xy in splits.items()}

    def train_dataloader(self) -> TensorBatches:
        x, y = self.shares["train"]
        return TensorBatches(x, y, self.batch_size, self.seed, epoch=self.current_epoch)

    def current_epoch(self) -> int:
        """The epoch whose order the mini-batches are shuffled in (the first one without a Trainer)."""
        return self.trainer.current_epoch if self.trainer is not None else 0

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.shares["val"])

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.shares["test"])

    def predict_dataloader(self) -> TensorBatches:
        return TensorBatches(self.shares["test"][0], None)


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
        self.center_points: np.ndarray | None = None  # drawn with the first points; a test split reuses them
        super().__init__(**kwargs)

    def make(self, n_samples: int, random_state: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        features, labels, self.center_points = make_blobs(
            n_samples=n_samples,
            centers=self.centers if self.center_points is None else self.center_points,
            n_features=2,
            cluster_std=self.cluster_std,
            random_state=random_state,
            return_centers=True,
        )
        return features, labels


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

    def make(self, n_samples: int, random_state: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        return make_moons(n_samples=n_samples, noise=self.noise, random_state=random_state)


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

    def make(self, n_samples: int, random_state: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        return make_circles(n_samples=n_samples, noise=self.noise, factor=self.factor, random_state=random_state)
