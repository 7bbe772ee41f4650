"""Checkpoints that stand on their own: what train.py records in them, how they are read back, and
where a resumed run continues."""

from __future__ import annotations

import fcntl
import inspect
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from mlnet_lightning.files import atomic_path, atomic_writer, remove_temporaries, write_text
from mlnet_lightning.imports import import_named
from mlnet_lightning.internals import ClaimedVersions, epochs_in_checkpoint

# The checkpoint's own record of the classes that wrote it: evaluate and predict rebuild both from it.
RUN_KEY = "mlnet_lightning"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not one that fits what was asked."""


class CannotWrite(Exception):
    """A run could not write its logs or checkpoints (a full disk, a quota, a permission taken away)."""

    @classmethod
    def during(cls, name: str, error: OSError, folder: str | None, checkpoint: str) -> CannotWrite:
        """The failure of run `name` writing in `folder`, with the checkpoint it can resume from."""
        # A failed write() names no file (only a failed open does): the run's folder then says where.
        where = error.filename or f"in {folder or 'the run folder'}"
        kept = checkpoint if checkpoint and Path(checkpoint).is_file() else ""
        advice = (
            f"last good checkpoint: {kept}; free some space and resume with --ckpt_path last"
            if kept
            else ("no checkpoint was written")
        )
        return cls(f"{name}: cannot write {where}: {error.strerror or error}; {advice}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing whole files (mlnet_lightning.files): Lightning's own goes
    through a temporary file in TMPDIR, which is copied over the checkpoint in place where TMPDIR is on
    another filesystem, so a reader or a kill could meet half a checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path, "wb") as file:
            torch.save(checkpoint, file)


class RunConfig(SaveConfigCallback):
    """The run's config.yaml (SaveConfigCallback's), written whole."""

    def __init__(self, parser: LightningArgumentParser, config: Namespace) -> None:
        super().__init__(parser, config, overwrite=True, save_to_log_dir=False)
        self.log_dir = ""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.log_dir = trainer.log_dir or ""  # a broadcast under DDP: every process must ask for it
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        folder = Path(self.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / self.config_filename, self.parser.dump(self.config, skip_none=False))


def class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class RunCheckpoint(L.Callback):
    """Makes each checkpoint enough to use or continue the run on its own: it records the model's and
    the data's classes (their options are the checkpoint's hyperparameters) and the latest metrics, and
    it flushes the loggers first, so that the curves on disk reach the epochs before the checkpoint's
    even if the process is killed right after. (Lightning logs an epoch's own end after the checkpoint
    callbacks of that epoch: a kill in between loses that epoch's point; the resumed run starts after it.)"""

    def __init__(self) -> None:
        self.restored_metrics: dict[str, float] = {}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        checkpoint[RUN_KEY] = {
            "model_class": class_path(pl_module),
            "data_class": class_path(trainer.datamodule),
            "metrics": metrics,
        }
        for logger in trainer.loggers:
            logger.save()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.restored_metrics = checkpoint.get(RUN_KEY, {}).get("metrics", {})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run starts with the metrics of its checkpoint, as the interrupted run had them: a run
        that validates no more after its resume still reports its last validation (Lightning restores
        no metrics, and resets them after restoring the callbacks)."""
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in self.restored_metrics.items()})
        self.restored_metrics = {}


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
    try:
        found = import_named(path)
    except (ImportError, AttributeError, ValueError, FileNotFoundError) as error:
        raise CheckpointError(f"the checkpoint's class {path} cannot be imported: {error}") from None
    if not (inspect.isclass(found) and issubclass(found, base)):
        raise CheckpointError(f"the checkpoint's class {path} is not a {base.__name__}")
    return found


def load_run(path: str | Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The trained model (in eval mode, on the CPU) and its data, rebuilt from the checkpoint alone."""
    record = read_checkpoint(path)[RUN_KEY]
    if record.get("data_class") is None:
        raise CheckpointError(f"{path} was trained without a data module, from which its data would be rebuilt")
    model_class = import_class(record["model_class"], L.LightningModule)
    data_class = import_class(record["data_class"], L.LightningDataModule)
    try:
        model = model_class.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        data = data_class.load_from_checkpoint(path, weights_only=True)
    except (RuntimeError, TypeError, KeyError) as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit its {model_class.__name__} network: {reason}") from None
    return model.eval(), data


class RunFileCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint of the run's own files, whose state a resumed run finds under ModelCheckpoint's
    key, as in checkpoints written before these classes had names of their own."""

    @property
    def state_key(self) -> str:
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)


class LatestCheckpoint(RunFileCheckpoint):
    """`checkpoints/last.ckpt`: every `every` epochs, and where the fit ends, however it ends (its last
    epoch, EarlyStopping, max_time, max_steps, Ctrl-C or SIGTERM), so that `--ckpt_path last` continues
    any run from its very end. (Lightning's save_last rewrites it only where a monitored metric improved.)

    Lightning saves at an epoch's end before it logs that epoch's points, and the resumed run logs from
    the next epoch on: a last.ckpt in place before the points are on disk would let a kill -9 leave a
    hole in the curves. The epoch-end save therefore goes to a pending file that becomes last.ckpt once
    the points are flushed, as the next epoch starts; at the fit's end they already are."""

    PENDING = ".last-pending"

    def __init__(self, every: int) -> None:
        # It saves once the epoch has ended (after its validation): a checkpoint saved at a validation's
        # end resumes inside that epoch, whose end then runs and logs a second time.
        super().__init__(
            filename=self.PENDING, every_n_epochs=every, save_on_train_epoch_end=True, enable_version_counter=False
        )
        self._first_step = 0

    def file(self, name: str = "last") -> Path | None:
        return Path(self.dirpath) / f"{name}{self.FILE_EXTENSION}" if self.dirpath else None

    def kept(self) -> str:
        """last.ckpt's path, if the run has one ("" if not)."""
        path = self.file()
        return str(path) if path is not None and path.is_file() else ""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._first_step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending = self.file(self.PENDING)
        if trainer.is_global_zero and pending is not None and pending.is_file():
            for logger in trainer.loggers:
                logger.save()
            os.replace(pending, self.file())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # Nothing trained, nothing to add; fast_dev_run, as for Lightning's own saves: a dry run writes nothing.
        if self.dirpath is None or trainer.global_step == self._first_step or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.file())  # the loggers are flushed first (RunCheckpoint)
        if trainer.is_global_zero:
            self.file(self.PENDING).unlink(missing_ok=True)


class BestCheckpoint(RunFileCheckpoint):
    """`epoch=N-best.ckpt`, the best by val/acc so far: one file, the one an uninterrupted run keeps, also
    after a resume. A resumed run saves again the bests of the epochs it trains again, over the files of
    the interrupted run rather than beside them (no -v1 copies); at the end of the fit, the best files it
    did not choose go: a later best of the interrupted run that this run did not reach (resumed with a
    smaller --max_epochs), or the checkpoint it resumed from, which Lightning never deletes."""

    FILES = "epoch=*-best*.ckpt"

    def __init__(self) -> None:
        super().__init__(monitor="val/acc", mode="max", filename="{epoch}-best", enable_version_counter=False)

    @classmethod
    def restore_best(cls, checkpoint: dict[str, Any], path: Path) -> None:
        """Put back the best file that `checkpoint` (at `path`) records, if the interrupted run deleted it
        for a later best and it was saved at the checkpoint's own validation: it holds the same state.
        The resumed run may not reach that later best (a smaller --max_epochs), and must keep this one."""
        state = checkpoint.get("callbacks", {}).get(cls().state_key, {})
        best = Path(state.get("best_model_path") or path)
        saved_at = re.match(r"epoch=(\d+)-best", best.name)
        in_its_run = best.resolve().parent == path.resolve().parent  # not a copy taken elsewhere
        if in_its_run and not best.exists() and saved_at and int(saved_at.group(1)) == checkpoint["epoch"]:
            try:
                with path.open("rb") as source, atomic_writer(best, "wb") as copy:
                    shutil.copyfileobj(source, copy)
            except OSError:  # a full disk: no half copy; the resumed run's next write says so, in one line
                pass

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (trainer.is_global_zero and self.dirpath and self.best_model_path):
            return
        kept = Path(self.best_model_path).resolve()
        for path in Path(self.dirpath).glob(self.FILES):
            if path.resolve() != kept:
                path.unlink(missing_ok=True)


class RunLogger(ClaimedVersions):
    """A TensorBoardLogger whose new version folder is claimed atomically: runs started together into
    one root never share a `version_N` (each takes the next free number by creating its folder, which
    fails for all but one). Only the main process claims; DDP's others write no logs."""

    def save(self) -> None:
        """TensorBoardLogger's save, its hparams.yaml written whole (it is written once, if missing)."""
        hparams = Path(self.log_dir) / self.NAME_HPARAMS_FILE
        if hparams.parent.is_dir() and not hparams.is_file():
            with atomic_path(hparams) as temporary:
                save_hparams_to_yaml(temporary, self.hparams)
        super().save()

    def claim(self, version: int) -> int:
        """The first free version from `version` on, its folder made (by this process alone)."""
        if rank_zero_only.rank != 0:
            return version
        root = Path(self.root_dir)
        root.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                (root / f"version_{version}").mkdir()
                return version
            except FileExistsError:
                version += 1


@dataclass
class Resume:
    """Where a run continues: its checkpoint, the run folder to keep writing in (None: a new version),
    and the first logger step it writes (TensorBoard hides the older points from that step on); `lock`
    holds the run folder for this process until `release`."""

    checkpoint: Path
    run_dir: Path | None
    first_step: int
    lock: IO | None = None

    def claim(self) -> None:
        """Become the run folder's one writer, or refuse: two processes resuming one run would both write
        its checkpoints, curves and summary. The lock is the kernel's, on an open file, so a killed
        process cannot leave it held. Only the main process claims; DDP's others write no files."""
        if self.run_dir is None or rank_zero_only.rank != 0:
            return
        lock = (self.run_dir / ".lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise CheckpointError(
                f"{self.run_dir} is being trained by another process: wait for it to end (or stop it) and resume then"
            ) from None
        self.lock = lock
        remove_temporaries(self.run_dir)  # a kill -9 mid-write leaves one; none is a checkpoint

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def logger(self) -> TensorBoardLogger:
        """A logger that goes on writing in the run's folder. The resumed run logs the points from its
        checkpoint on again; purge_step makes TensorBoard drop the interrupted run's copies of them."""
        assert self.run_dir is not None
        # TensorBoard reads a folder's event files in name order, and a name starts with the second the
        # file was made: the new file must come from a later second than the interrupted run's.
        names = [path.name.split(".") for path in self.run_dir.glob("events.out.tfevents.*")]
        stamps = [int(parts[3]) for parts in names if len(parts) > 3 and parts[3].isdigit()]
        time.sleep(max(0.0, max(stamps, default=0) + 1 - time.time()))
        return RunLogger(
            self.run_dir.parent.parent,
            name=self.run_dir.parent.name,
            version=self.run_dir.name,
            purge_step=self.first_step,
            **LOGGER_OPTIONS,
        )


# TensorBoard's writer hands each event to its own thread through a queue of 10 by default, so a
# bulk's thousand points would wait on that thread event by event (measured: 176 against 13 us a
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


def resume_path(ckpt_path: str, runs_dir: Path) -> Path | None:
    """The checkpoint `--ckpt_path` names: a path, or `last` for the newest run's under `runs_dir` (None
    when that run saved none)."""
    return newest_last_checkpoint(runs_dir) if ckpt_path == "last" else Path(ckpt_path)


def check_epochs(checkpoint: dict[str, Any], path: Path, max_epochs: int | None) -> None:
    """Refuse to resume from a checkpoint that already holds `max_epochs` epochs or more: Lightning
    would rewrite the run's config.yaml and then fail, or train nothing and rewrite its summary."""
    trained = epochs_in_checkpoint(checkpoint)
    if max_epochs is not None and 0 <= max_epochs <= trained:
        raise CheckpointError(
            f"--max_epochs {max_epochs}: {path} has trained {trained} epochs already; "
            f"give more than {trained} to continue it"
        )


def check_resumable(ckpt_path: str, runs_dir: Path, max_epochs: int | None) -> None:
    """`check_epochs` for the checkpoint `--ckpt_path` names, if any."""
    path = resume_path(ckpt_path, runs_dir)
    if path is not None:
        check_epochs(read_checkpoint(path), path, max_epochs)


def ended_run(ckpt_path: str | None, runs_dir: Path, max_epochs: int | None) -> dict[str, Any] | None:
    """The summary of the newest run under `runs_dir` when `--ckpt_path last` names a run that has already
    ended on its own at `max_epochs` epochs (its summary.json written); None for any run left to train."""
    last = newest_last_checkpoint(runs_dir) if ckpt_path == "last" and max_epochs is not None else None
    if last is None or not (last.parent.parent / "summary.json").is_file():
        return None
    if epochs_in_checkpoint(read_checkpoint(last)) != max_epochs:
        return None
    return json.loads((last.parent.parent / "summary.json").read_text())


def plan_resume(
    ckpt_path: str, runs_dir: Path, model: L.LightningModule, data: L.LightningDataModule, max_epochs: int | None
) -> Resume | None:
    """Check that the checkpoint continues this very run (`ckpt_path` as for `resume_path`) for more
    epochs, before anything is written, and say where the continued run writes; None when there is
    nothing to resume."""
    path = resume_path(ckpt_path, runs_dir)
    if path is None:
        return None
    checkpoint = read_checkpoint(path)
    check_same_run(checkpoint, path, model, data)
    check_tensors(checkpoint, path, model)
    check_epochs(checkpoint, path, max_epochs)
    # Full batch, the logger's step of an epoch is its number: the resumed run logs again from there.
    first_step = int(checkpoint["global_step"])
    resume = Resume(path, path.parent.parent if path.parent.name == "checkpoints" else None, first_step)
    resume.claim()
    BestCheckpoint.restore_best(checkpoint, path)
    return resume


def check_tensors(checkpoint: dict[str, Any], path: Path, model: L.LightningModule) -> None:
    """A damaged checkpoint (a tensor missing, extra or of another shape) is refused before the resumed
    run writes anything, rather than by load_state_dict once its folder has a new config and event file."""
    saved, expected = checkpoint["state_dict"], model.state_dict()
    problems = [f"{name} is missing" for name in expected if name not in saved]
    problems += [f"{name} is not {type(model).__name__}'s" for name in saved if name not in expected]
    problems += [
        f"{name} has shape {list(saved[name].shape)}, not {list(tensor.shape)}"
        for name, tensor in expected.items()
        if name in saved and getattr(saved[name], "shape", None) != tensor.shape
    ]
    if problems:
        raise CheckpointError(f"{path} does not fit its network: {'; '.join(problems)}")


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
