"""The command line's callbacks: a progress bar of epochs, the run summary, and a clean stop on Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm

from mlnet_lightning.files import write_text
from mlnet_lightning.signals import (
    PARENT_ASKS,
    STOP_SIGNALS,
    describe,
    ignore_stop_signals,
    restore_handlers,
    take_signals,
)


class EpochProgressBar(ProgressBar):
    """One bar per run counting epochs, with the latest loss and accuracies (Lightning's own bar counts
    the batches of each epoch: one here)."""

    def __init__(self, make_bar: Callable[..., tqdm] = tqdm) -> None:
        """`make_bar` makes the bar from tqdm's options (a worker of --jobs sends them to its parent)."""
        super().__init__()
        self.make_bar = make_bar
        self.bar: tqdm | None = None
        self._enabled = True

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            total = trainer.max_epochs if trainer.max_epochs >= 0 else None
            name = getattr(pl_module, "network_name", type(pl_module).__name__)
            self.bar = self.make_bar(total=total, desc=name, unit="epoch", dynamic_ncols=True)
            self.bar.n = trainer.current_epoch  # a resumed run's bar starts where it stopped

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Under DDP, reading a metric logged with sync_dist reduces it over the processes: every rank must
        # read it here, at the same point, or rank 0's reduction waits for ranks that have moved on.
        latest = trainer.callback_metrics
        if self.bar is None:
            return
        shown = ("train/loss", "train/acc", "val/acc")
        metrics = {k: f"{float(v):.4f}" for k, v in latest.items() if k in shown}
        self.bar.set_postfix(metrics, refresh=False)
        # Lightning counts the epoch once it has ended; tqdm redraws at most every 0.1 s.
        self.bar.update(trainer.current_epoch + 1 - self.bar.n)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.close()

    def close(self) -> None:
        """End the bar's line, so that what is printed next (the table, an error) starts on its own."""
        if self.bar is not None:
            self.bar.refresh()
            self.bar.close()
            self.bar = None


class RunInterrupted(Exception):
    """A stop request ended the run: `signum` is the signal (SIGINT for Ctrl-C, SIGTERM), `summary` holds
    its numbers so far, `checkpoint` the checkpoint it resumes from ("" when none was written)."""

    def __init__(
        self, summary: dict[str, Any] | None = None, checkpoint: str = "", signum: int = signal.SIGINT
    ) -> None:
        super().__init__(f"stopped by {describe(signum)}")
        self.summary = summary or {}
        self.checkpoint = checkpoint
        self.signum = signum


class StopOnInterrupt(L.Callback):
    """Ctrl-C (SIGINT) or SIGTERM ends the run cleanly: the current epoch finishes and the fit ends
    (checkpoints.LatestCheckpoint writes `last.ckpt` there), so nothing trained is lost and `--ckpt_path
    last` continues exactly; `signum` then says which signal it was. A second such signal stops at once
    by raising RunInterrupted, which leaves the previous checkpoint (a checkpoint being written is
    written whole or not at all). A --jobs parent's request (PARENT_ASKS) stops the same way but never
    counts as the second signal.

    Lightning's own SIGTERM handler stops at the end of the current batch (in the middle of an epoch of
    mini-batches) by raising SIGTERMException; in one process this one takes its place once training
    starts. Under several processes Lightning's stays: it stops every rank at the same batch."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._origins: set[str] = set()  # "signal" and "parent": a repeat from one of them stops at once
        self._trainer: L.Trainer | None = None
        self._takes_sigterm = False
        self._in_epoch = False  # between an epoch's first batch and its end

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextmanager
    def listening(self, trainer: L.Trainer) -> Iterator[None]:
        """Take the stop signals for the length of a fit, then give them back to their previous handlers
        (Lightning's teardown after a failed fit reinstalls the handlers it found, this one's included)."""
        self._trainer = trainer
        previous = take_signals(dict.fromkeys(STOP_SIGNALS, self._on_signal))
        self._takes_sigterm = signal.SIGTERM in previous
        try:
            yield
        finally:
            if self.requested:  # the command ends with this run
                ignore_stop_signals()
            else:
                restore_handlers(previous)

    def cut_short(self, trainer: L.Trainer) -> bool:
        """Whether a stop request ended the fit before its --max_epochs or --max_steps (a request that came
        in the last epoch did not: that run has ended)."""
        ended_epochs = trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs
        ended_steps = trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
        return self.requested and not (ended_epochs or ended_steps)

    def _on_signal(self, signum: int, frame: Any) -> None:
        origin = "parent" if signum == PARENT_ASKS else "signal"
        if origin in self._origins:
            raise RunInterrupted(signum=self.signum)
        self._origins.add(origin)
        if self.signum is None:
            self.signum = signum
            if self._stops_now(signum):
                self._trainer.should_stop = True

    def _stops_now(self, signum: int) -> bool:
        """Whether to stop the fit as soon as asked. In one process, when an epoch is one batch and it has
        begun: stopping now is stopping at its end, and the fast path heeds should_stop between the epochs
        it trains in bulk. Between epochs, no: Lightning would begin the next epoch, end it without its
        batch and count it, and the checkpoint would claim an epoch it never trained; the request waits
        for the next epoch's end, as mini-batch epochs do (on_train_epoch_end). Under several processes,
        Ctrl-C as ever (every rank gets it from the terminal); SIGTERM is Lightning's to handle."""
        if self._trainer.world_size > 1:
            return signum == signal.SIGINT
        return self._trainer.num_training_batches == 1 and self._in_epoch

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1 and self._takes_sigterm:
            signal.signal(signal.SIGTERM, self._on_signal)  # Lightning installed its own since listening began
        if self.requested:  # asked during set-up: no epoch starts
            trainer.should_stop = True

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int | None:
        """For the fast path: this callback acts at an epoch's end only once a stop is requested."""
        return epoch if self.requested else None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._in_epoch = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._in_epoch = False
        if self.requested:
            trainer.should_stop = True


class RunSummary(L.Callback):
    """Times the fit and writes `summary.json` (first and final numbers) into the run's folder, only
    when the run has ended on its own: an interrupted or failed run keeps its numbers in `summary`.
    The time is kept in checkpoints, so that a resumed run reports the fit's time in all its sessions."""

    def __init__(self, model_name: str, stop: StopOnInterrupt | None = None) -> None:
        self.model_name = model_name
        self.stop = stop
        self.summary: dict[str, Any] = {}
        self._start = 0.0
        self._earlier_seconds = 0.0  # fit time of the sessions before a resume
        self.initial_loss: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int | None:
        """For the fast path: epoch 0's end, for the initial loss."""
        return 0 if epoch == 0 else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The initial loss is epoch 0's train/loss, as the final loss is the last epoch's: the first and last
        points of TensorBoard's curve (the tutorial's "loss at epoch 0": with the full batch, the loss before any
        update; with mini-batches, the epoch's mean over its batches, as Lightning logs it)."""
        if trainer.current_epoch == 0 and "train/loss" in trainer.callback_metrics:
            self.initial_loss = float(trainer.callback_metrics["train/loss"])

    def fit_seconds(self) -> float:
        return self._earlier_seconds + time.perf_counter() - self._start

    def state_dict(self) -> dict[str, Any]:
        return {"fit_seconds": self.fit_seconds(), "initial_loss": self.initial_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._earlier_seconds = state_dict["fit_seconds"]
        self.initial_loss = state_dict.get("initial_loss")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.summary = self.collect(trainer, pl_module)
        interrupted = self.stop is not None and self.stop.cut_short(trainer)
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask for it
        if trainer.is_global_zero and log_dir and not interrupted:
            write_text(Path(log_dir) / "summary.json", json.dumps(self.summary, indent=2) + "\n")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.summary = self.collect(trainer, pl_module)

    def collect(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        # The last epoch's numbers, and the last validation's.
        latest = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        device = trainer.strategy.root_device
        return {
            "model": self.model_name,
            "epochs": trainer.current_epoch,
            "initial_loss": self.initial_loss,
            "final_loss": latest.get("train/loss"),
            "train_acc": latest.get("train/acc"),
            "val_acc": latest.get("val/acc"),
            "fit_seconds": round(self.fit_seconds(), 3),
            "device": f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device),
            **getattr(pl_module, "extra_summary", {}),  # stacked copies: each copy's numbers, their spread
        }
