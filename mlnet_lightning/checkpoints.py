"""Checkpoints that stand on their own: what train.py records in them, how they are read back, and
where a resumed run continues."""

from __future__ import annotations

import importlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

# The checkpoint's own record of the classes that wrote it: evaluate and predict rebuild both from it.
RUN_KEY = "mlnet_lightning"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not one that fits what was asked."""


def class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class RunCheckpoint(L.Callback):
    """Makes each checkpoint enough to use or continue the run on its own: it records the model's and
    the data's classes (their options are the checkpoint's hyperparameters), and it flushes the
    loggers first, so that the curves on disk reach at least the checkpoint's epoch even if the
    process is killed right after."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[RUN_KEY] = {"model_class": class_path(pl_module), "data_class": class_path(trainer.datamodule)}
        for logger in trainer.loggers:
            logger.save()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path`, loaded as plain data (no code runs), or a CheckpointError saying why not."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports a truncated zip, an empty file or a stray pickle in many ways
        reason = str(error).strip().split(". ")[0] or type(error).__name__  # the first sentence is enough
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a checkpoint ({reason})") from None
    if not (isinstance(checkpoint, dict) and RUN_KEY in checkpoint and "state_dict" in checkpoint):
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (no model class recorded in it)")
    return checkpoint


def import_class(path: str, base: type) -> type:
    """The class at `module.Class`, which must subclass `base`."""
    module_name, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise CheckpointError(f"the checkpoint's class {path} cannot be imported: {error}") from None
    if not (inspect.isclass(found) and issubclass(found, base)):
        raise CheckpointError(f"the checkpoint's class {path} is not a {base.__name__}")
    return found


def load_run(path: str | Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The trained model (in eval mode, on the CPU) and its data, rebuilt from the checkpoint alone."""
    record = read_checkpoint(path)[RUN_KEY]
    model_class = import_class(record["model_class"], L.LightningModule)
    data_class = import_class(record["data_class"], L.LightningDataModule)
    try:
        model = model_class.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        data = data_class.load_from_checkpoint(path, weights_only=True)
    except (RuntimeError, TypeError, KeyError) as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit its {model_class.__name__} network: {reason}") from None
    return model.eval(), data


@dataclass
class Resume:
    """Where a run continues: its checkpoint, the run folder to keep writing in (None: a new version),
    and the first logger step it writes (TensorBoard hides the older points from that step on)."""

    checkpoint: Path
    run_dir: Path | None
    first_step: int

    def logger(self) -> TensorBoardLogger:
        """A logger that goes on writing in the run's folder. The resumed run logs the points from its
        checkpoint on again; purge_step makes TensorBoard drop the interrupted run's copies of them."""
        assert self.run_dir is not None
        # TensorBoard reads a folder's event files in name order, and a name starts with the second the
        # file was made: the new file must come from a later second than the interrupted run's.
        names = [path.name.split(".") for path in self.run_dir.glob("events.out.tfevents.*")]
        stamps = [int(parts[3]) for parts in names if len(parts) > 3 and parts[3].isdigit()]
        time.sleep(max(0.0, max(stamps, default=0) + 1 - time.time()))
        return TensorBoardLogger(
            self.run_dir.parent.parent,
            name=self.run_dir.parent.name,
            version=self.run_dir.name,
            purge_step=self.first_step,
            **LOGGER_OPTIONS,
        )


# TensorBoard's writer hands each event to its own thread through a queue of 10 by default, so a
# chunk's thousand points would wait on that thread event by event (measured: 176 against 13 us a
# point); the queue is flushed with every checkpoint and at the end.
LOGGER_OPTIONS = {"default_hp_metric": False, "max_queue": 100_000}


def newest_last_checkpoint(runs_dir: Path) -> Path | None:
    """`last.ckpt` of the newest version under `runs_dir`, if that run saved one."""
    versions = [d for d in runs_dir.glob("version_*") if d.name.removeprefix("version_").isdigit()]
    if not versions:
        return None
    newest = max(versions, key=lambda d: int(d.name.removeprefix("version_")))
    last = newest / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def plan_resume(ckpt_path: str, runs_dir: Path, model: L.LightningModule, data: L.LightningDataModule) -> Resume | None:
    """Check that the checkpoint continues this very run (`ckpt_path` is a path, or `last` for the newest
    run under `runs_dir`; None when it has none) and say where the continued run writes."""
    path = newest_last_checkpoint(runs_dir) if ckpt_path == "last" else Path(ckpt_path)
    if path is None:
        return None
    checkpoint = read_checkpoint(path)
    check_same_run(checkpoint, path, model, data)
    # Full batch, the logger's step of an epoch is its number: the resumed run logs again from there.
    first_step = int(checkpoint["global_step"])
    return Resume(path, path.parent.parent if path.parent.name == "checkpoints" else None, first_step)


def check_same_run(checkpoint: dict[str, Any], path: Path, model: L.LightningModule, data: L.LightningDataModule):
    """A resumed run must rebuild the same network on the same data, or it would not continue the
    same curve; only the number of epochs may change."""
    recorded = checkpoint[RUN_KEY]["model_class"]
    if recorded != class_path(model):
        raise CheckpointError(
            f"{path} is from another network: it holds a {recorded.rpartition('.')[2]}, not a {type(model).__name__}"
        )
    expected = [(key, value, model.hparams.get(key)) for key, value in checkpoint.get("hyper_parameters", {}).items()]
    expected += [
        (f"data.{key}", value, data.hparams.get(key))
        for key, value in checkpoint.get("datamodule_hyper_parameters", {}).items()
    ]
    for option, trained, given in expected:
        if trained != given:
            raise CheckpointError(f"{path} was trained with {option}={trained!r}, but this command gives {given!r}")
