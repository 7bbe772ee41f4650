"""The CPU threads of a fit: set per fit by a callback the training module gives the Trainer, never for the
whole process."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor


class FitThreads(L.Callback):
    """One CPU thread for a fit of small batches, whatever loader gives them: batches of a few hundred rows
    gain nothing from a second thread, and lose up to 8x whenever that thread must wait for a core
    (measured: 0.75 against 4-6 ms an epoch; a user's DataLoader on two threads took 6-34 s for 1,000
    epochs). It chooses at the first training batch (the first epoch, for the project's mini-batches) and
    gives the threads back as the fit ends, however it ends. Once: an epoch's smaller last batch changes
    nothing (it put a fit of batches of 4,096 on one thread from its first epoch's end, validation included)."""

    SMALL_BATCH_ROWS = 4096

    def __init__(self) -> None:
        self.before: int | None = None
        self.chosen = False

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int | None:
        """For the fast path: the threads are the same for every epoch."""
        return None

    def choose(self, batch: Tensor, device: torch.device) -> None:
        if self.chosen:
            return
        self.chosen = True
        threads = torch.get_num_threads()
        if threads > 1 and device.type == "cpu" and len(batch) < self.SMALL_BATCH_ROWS:
            self.before = self.before or threads
            torch.set_num_threads(1)

    def give_back(self) -> None:
        self.chosen = False
        if self.before is not None:
            torch.set_num_threads(self.before)
            self.before = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        if getattr(loader, "full_batch", True) is False:  # the project's mini-batches: before the fast path's bulk
            self.choose(loader.x[: loader.batch_size], pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.choose(batch[0], pl_module.device)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.give_back()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.give_back()
