"""Callbacks that speak in data epochs: a progress bar and the run summary."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm


def epochs_done(trainer: L.Trainer, module: L.LightningModule, in_epoch_end: bool = False) -> int:
    """Passes over the training data so far (a fast module trains many per Lightning epoch)."""
    history = getattr(module, "history", {})
    if "epoch" in history:
        return int(history["epoch"]) + 1
    return trainer.current_epoch + int(in_epoch_end)  # the Trainer counts the epoch once it has ended


class EpochProgressBar(ProgressBar):
    """One bar per run counting data epochs, with the latest loss and accuracies."""

    def __init__(self) -> None:
        super().__init__()
        self.bar: tqdm | None = None
        self._enabled = True

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            total = getattr(trainer.datamodule, "epochs", trainer.max_epochs)
            self.bar = tqdm(total=total, desc=type(pl_module).__name__, unit="epoch", dynamic_ncols=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is None:
            return
        self.bar.n = epochs_done(trainer, pl_module, in_epoch_end=True)
        shown = ("train/loss", "train/acc", "val/acc")
        metrics = {k: f"{float(v):.4f}" for k, v in trainer.callback_metrics.items() if k in shown}
        self.bar.set_postfix(metrics, refresh=False)
        self.bar.refresh()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunSummary(L.Callback):
    """Times the fit and writes `summary.json` (first and final numbers) into the run's folder."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.summary: dict[str, Any] = {}
        self._start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A plain LightningModule has no history: its last logged values stand in.
        history = getattr(pl_module, "history", None) or {
            name: float(value) for name, value in trainer.callback_metrics.items()
        }
        device = trainer.strategy.root_device
        self.summary = {
            "model": self.model_name,
            "epochs": epochs_done(trainer, pl_module),
            "initial_loss": history.get("initial_loss"),
            "final_loss": history.get("train/loss"),
            "train_acc": history.get("train/acc"),
            "val_acc": history.get("val/acc"),
            "fit_seconds": round(time.perf_counter() - self._start, 3),
            "device": f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device),
            **getattr(pl_module, "extra_summary", {}),  # stacked copies: each copy's numbers, their spread
        }
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask for it
        if trainer.is_global_zero and log_dir:
            path = Path(log_dir) / "summary.json"
            path.write_text(json.dumps(self.summary, indent=2) + "\n")
