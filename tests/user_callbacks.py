"""Callbacks a user might write, for the tests that run train.py in a process of its own
(`--callbacks tests.user_callbacks.KillAt --callbacks.epoch 249`, from the repository's root)."""

import os
import signal

import lightning as L
import torch
import torch.distributed as dist


class KillAt(L.Callback):
    """Ends the process as `kill -9` does, as epoch `epoch` ends (before anything of that end is saved)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int | None:
        return self.epoch if epoch <= self.epoch else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class CollectiveOnRankZero(L.Callback):
    """A mistake under DDP: a collective that only rank 0 joins, at the end of epoch 3."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 3 and trainer.is_global_zero:
            dist.all_reduce(torch.ones(1))


class SigtermAt(L.Callback):
    """Sends this process SIGTERM as epoch `epoch` starts, as a cluster's stop may come at any epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int | None:
        return self.epoch - 1 if epoch <= self.epoch else None  # the fast path sees epoch ends only

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)
