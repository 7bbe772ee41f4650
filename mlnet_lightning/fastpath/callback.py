"""The fast path as the Trainer gets it: a callback (the project's modules return it from
configure_callbacks, so that any Trainer fitting them has it)."""

from __future__ import annotations

import lightning as L
from torch import Tensor

from mlnet_lightning.fastpath.bulk import fast_forward


class FastPath(L.Callback):
    """Trains in bulk the epochs that nothing observes: at an epoch's start for the mini-batches of the project's
    loader (before Lightning cuts them), at the start of its step for the full batch. Where it cannot vouch
    for the module, the data or the Trainer's options, it does nothing; `fast_path = False` on the module
    switches it off."""

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int | None:
        return None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(trainer.train_dataloader, "full_batch", True) is False:
            fast_forward(pl_module, None)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: tuple[Tensor, Tensor], batch_idx: int
    ) -> None:
        fast_forward(pl_module, batch)
