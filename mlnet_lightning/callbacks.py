"""The command line's callbacks: a progress bar of epochs, the run summary, and a clean Ctrl-C."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm


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
            self.bar = self.make_bar(total=total, desc=type(pl_module).__name__, unit="epoch", dynamic_ncols=True)
            self.bar.n = trainer.current_epoch  # a resumed run's bar starts where it stopped

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is None:
            return
        shown = ("train/loss", "train/acc", "val/acc")
        metrics = {k: f"{float(v):.4f}" for k, v in trainer.callback_metrics.items() if k in shown}
        self.bar.set_postfix(metrics, refresh=False)
        # Lightning counts the epoch once it has ended; tqdm redraws at most every 0.1 s.
        self.bar.update(trainer.current_epoch + 1 - self.bar.n)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.refresh()
            self.bar.close()
            self.bar = None


class RunInterrupted(Exception):
    """The user stopped the run with Ctrl-C; `summary` holds its numbers so far, `checkpoint` its newest
    checkpoint ("" when none was written)."""

    def __init__(self, summary: dict[str, Any] | None = None, checkpoint: str = "") -> None:
        super().__init__("interrupted")
        self.summary = summary or {}
        self.checkpoint = checkpoint


class StopOnInterrupt(L.Callback):
    """Ctrl-C (SIGINT) ends the run cleanly: the current Lightning step finishes and is checkpointed,
    so nothing trained is lost and the run resumes exactly; fit then returns with `requested` set.
    A second Ctrl-C stops at once by raising RunInterrupted, leaving the previous step's checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        self._trainer: L.Trainer | None = None
        self._previous_handler: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # only the main thread may take signals
            self._trainer = trainer
            self._previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise RunInterrupted
        self.requested = True
        self._trainer.should_stop = True
        print(
            "\nCtrl-C: stopping after the current step and its checkpoint; Ctrl-C again stops at once.",
            file=sys.stderr,
            flush=True,
        )

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handler()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handler()


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

    @torch.no_grad()
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The loss before any update: epoch 0's loss, computed as that epoch computes it."""
        data = trainer.datamodule
        if trainer.current_epoch == 0 and hasattr(pl_module, "loss") and hasattr(data, "x_train"):
            self.initial_loss = pl_module.loss(pl_module(data.x_train), data.y_train).mean().item()

    def fit_seconds(self) -> float:
        return self._earlier_seconds + time.perf_counter() - self._start

    def state_dict(self) -> dict[str, Any]:
        return {"fit_seconds": self.fit_seconds(), "initial_loss": self.initial_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._earlier_seconds = state_dict["fit_seconds"]
        self.initial_loss = state_dict.get("initial_loss")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.summary = self.collect(trainer, pl_module)
        interrupted = self.stop is not None and self.stop.requested
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask for it
        if trainer.is_global_zero and log_dir and not interrupted:
            path = Path(log_dir) / "summary.json"
            path.write_text(json.dumps(self.summary, indent=2) + "\n")

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
