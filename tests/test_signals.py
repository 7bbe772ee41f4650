"""Ctrl-C and SIGTERM (what SLURM, Kubernetes and systemd send): a run stops at the end of an epoch with its
checkpoint, says so in one line and exits 130 or 143; under --jobs the parent and its workers stop together."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlnet_lightning.callbacks import StopOnInterrupt
from mlnet_lightning.cli import main
from tests.conftest import ONE_THREAD_ENV, ROOT

QUIET = ("--accelerator", "cpu", "--enable_progress_bar", "false", "--pictures", "false")
# Full batch (the fast path trains the epochs between checkpoints in bulk), a checkpoint every 100 epochs.
FULL_BATCH = ("--model", "linear", "--max_epochs", "3000", "--checkpoint_every", "100")
FULL_BATCH += ("--check_val_every_n_epoch", "100")
# Three shuffled mini-batches an epoch: a stop must wait for the epoch's last one.
MINI_BATCH = ("--model", "linear", "--max_epochs", "150", "--checkpoint_every", "10", "--check_val_every_n_epoch", "10")
MINI_BATCH += ("--data.batch_size", "250", "--seed", "7")
# Long enough to be stopped on the way.
LONG_RUNS = ("--max_epochs", "100000", "--checkpoint_every", "100", "--check_val_every_n_epoch", "100")
# Two networks at a time of the five.
ALL_AT_ONCE = (*LONG_RUNS, "--jobs", "2")


def start(root: Path, *args: str, script: str = "train.py") -> subprocess.Popen:
    """train.py (or another training script) in a session of its own, to be signalled."""
    command = [sys.executable, str(ROOT / "scripts" / script), *QUIET, *args, "--default_root_dir", str(root)]
    return subprocess.Popen(
        command, cwd=ROOT, env=ONE_THREAD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, "the command ended before it could be signalled"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def last_checkpoint(root: Path, name: str = "linear") -> Path:
    return root / name / "version_0" / "checkpoints" / "last.ckpt"


def epochs_in(checkpoint: Path) -> int:
    return torch.load(checkpoint, weights_only=True)["epoch"]


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie, waiting for its parent or init to reap it, runs no more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def workers(pid: int) -> list[int]:
    """The --jobs parent's worker processes."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The TensorBoard curves of a run (the HPARAMS metrics aside: each session writes them once)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = [tag for tag in events.Tags()["scalars"] if not tag.startswith("hp/")]
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags}


def finish(root: Path, *args: str) -> dict:
    """Train in this process; returns the run's summary.json without its time."""
    assert main([*QUIET, *args, "--default_root_dir", str(root)]) == 0
    summary = json.loads((root / "linear" / "version_0" / "summary.json").read_text())
    return {key: value for key, value in summary.items() if key != "fit_seconds"}


@pytest.mark.parametrize(
    ("signum", "run"), [(signal.SIGTERM, FULL_BATCH), (signal.SIGINT, MINI_BATCH)], ids=["sigterm", "ctrl-c"]
)
def test_a_stopped_run_checkpoints_its_last_epoch_and_resumes_exactly(tmp_path, signum, run):
    stopped, uninterrupted = tmp_path / "stopped", tmp_path / "uninterrupted"
    last = last_checkpoint(stopped)
    victim = start(stopped, *run)
    wait_for(last.exists, victim)
    victim.send_signal(signum)
    stdout, stderr = victim.communicate(timeout=120)

    assert victim.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    [line] = stderr.splitlines()  # one line, no traceback
    assert ("Ctrl-C" if signum == signal.SIGINT else "SIGTERM") in line and "--ckpt_path last" in line
    assert str(last) in line
    run_dir = stopped / "linear" / "version_0"
    assert not (run_dir / "summary.json").exists()  # an interrupted run does not look finished
    # The checkpoint is where the run stopped: its epochs are those on the curve, whole epochs only.
    checkpoint = torch.load(last, weights_only=True)
    epochs = checkpoint["epoch"]
    assert 0 < epochs < int(run[run.index("--max_epochs") + 1])
    assert checkpoint["loops"]["fit_loop"]["epoch_progress"]["total"]["completed"] == epochs
    curve = scalars(run_dir)["train/loss"]
    assert len(curve) == epochs  # a point per epoch
    assert float(stdout.splitlines()[1].split()[2]) == pytest.approx(curve[-1][1], abs=1e-6)  # the table so far

    resumed = finish(stopped, *run, "--ckpt_path", "last")
    assert [path.name for path in (stopped / "linear").iterdir()] == ["version_0"]  # the same run folder
    assert resumed == finish(uninterrupted, *run)
    assert scalars(run_dir) == scalars(uninterrupted / "linear" / "version_0")  # every epoch once, the same values


def test_a_second_signal_stops_at_once_and_keeps_the_previous_checkpoint(tmp_path):
    # 500 mini-batches an epoch: seconds, so that the second signal comes before the epoch ends.
    run = ("--model", "linear", "--max_epochs", "1000", "--checkpoint_every", "1", "--check_val_every_n_epoch", "1")
    victim = start(tmp_path, *run, "--data.n_samples", "2000", "--data.batch_size", "3")
    last = last_checkpoint(tmp_path)
    wait_for(last.exists, victim)
    saved = epochs_in(last)
    victim.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    victim.send_signal(signal.SIGTERM)
    _, stderr = victim.communicate(timeout=60)
    assert victim.returncode == 143
    [line] = stderr.splitlines()
    assert "SIGTERM" in line and str(last) in line
    assert epochs_in(last) in (saved, saved + 1)  # the previous checkpoint (one more may have ended meanwhile)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_start_up_stops_at_once_in_one_line(tmp_path, signum):
    victim = start(tmp_path, "--model", "linear", "--max_epochs", "100")
    time.sleep(1)  # importing torch and Lightning takes longer
    assert victim.poll() is None
    victim.send_signal(signum)
    stdout, stderr = victim.communicate(timeout=60)
    assert victim.returncode == 128 + signum
    assert stdout == ""
    [line] = stderr.splitlines()
    assert "while no network was training" in line
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


SCRIPT_OPTIONS = {"evaluate.py": ["--ckpt", "run.ckpt"], "predict.py": ["--ckpt", "run.ckpt", "--input", "in.csv",
                                                                         "--output", "out.csv"]}  # fmt: skip


@pytest.mark.parametrize("script", SCRIPT_OPTIONS)
def test_ctrl_c_stops_evaluate_and_predict_in_one_line(tmp_path, script):
    command = [sys.executable, str(ROOT / "scripts" / script), *SCRIPT_OPTIONS[script]]
    victim = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)  # importing torch and Lightning takes longer
    assert victim.poll() is None
    victim.send_signal(signal.SIGINT)
    _, stderr = victim.communicate(timeout=60)
    assert victim.returncode == 130
    [line] = stderr.splitlines()
    assert line.startswith(f"{script}: stopped by Ctrl-C")


def test_sigterm_to_the_jobs_parent_stops_every_worker_at_a_checkpoint(tmp_path):
    parent = start(tmp_path, *ALL_AT_ONCE)
    wait_for(lambda: last_checkpoint(tmp_path, "scratch").exists() and len(workers(parent.pid)) == 2, parent)
    pids = workers(parent.pid)
    parent.send_signal(signal.SIGTERM)
    stdout, stderr = parent.communicate(timeout=120)
    assert parent.returncode == 143
    [line] = stderr.splitlines()
    assert "SIGTERM" in line and "--ckpt_path last" in line
    assert not any(alive(pid) for pid in pids)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["functional", "scratch"]  # no third one started
    assert all(last_checkpoint(tmp_path, name).exists() for name in ("scratch", "functional"))
    assert not list(tmp_path.rglob("summary.json"))
    assert [row.split()[0] for row in stdout.splitlines()[1:]] == ["scratch", "functional"]  # the table so far


def test_sigterm_stops_a_comparison_as_it_stops_train_py(tmp_path):
    """compare.py: the table of its runs so far in its own columns, one line with the resume advice, 143."""
    victim = start(tmp_path, "--model", "all", *LONG_RUNS, script="compare.py")
    last = tmp_path / "compare" / "scratch" / "version_0" / "checkpoints" / "last.ckpt"
    wait_for(last.exists, victim)
    victim.send_signal(signal.SIGTERM)
    stdout, stderr = victim.communicate(timeout=120)
    assert victim.returncode == 143
    assert stderr.splitlines() == [
        f"compare.py: stopped by SIGTERM; resume with the same command and --ckpt_path last (checkpoint: {last})"
    ]
    header, row = stdout.splitlines()
    assert header.split()[:3] == ["run", "data", "model"] and row.split()[:3] == ["scratch", "BlobData", "scratch"]
    assert 0 < epochs_in(last) < 100_000 and not list(tmp_path.rglob("summary.json"))
    assert [path.name for path in (tmp_path / "compare").iterdir()] == ["scratch"]  # no second run started


def test_sigterm_to_one_worker_fails_the_command_in_one_line(tmp_path):
    parent = start(tmp_path, *ALL_AT_ONCE)
    wait_for(lambda: last_checkpoint(tmp_path, "scratch").exists() and len(workers(parent.pid)) == 2, parent)
    pids = workers(parent.pid)
    os.kill(pids[0], signal.SIGTERM)  # as an administrator, or a scheduler that signals one process
    _, stderr = parent.communicate(timeout=120)
    assert parent.returncode == 1
    [line] = stderr.splitlines()
    assert line.startswith("train.py: error: scratch: its worker process was stopped by SIGTERM;")
    assert not any(alive(pid) for pid in pids)  # the other worker stopped too
    assert sorted(path.name for path in tmp_path.iterdir()) == ["functional", "scratch"]


def test_a_killed_worker_fails_the_command_and_stops_the_others(tmp_path):
    parent = start(tmp_path, *ALL_AT_ONCE)
    wait_for(lambda: last_checkpoint(tmp_path, "scratch").exists() and len(workers(parent.pid)) == 2, parent)
    pids = workers(parent.pid)
    os.kill(pids[0], signal.SIGKILL)  # as the out-of-memory killer would
    _, stderr = parent.communicate(timeout=120)
    assert parent.returncode == 1
    [line] = stderr.splitlines()
    assert line.startswith("train.py: error: scratch: its worker process died (exit status -9);")
    assert not any(alive(pid) for pid in pids)


def test_the_workers_stop_when_the_parent_is_killed(tmp_path):
    parent = start(tmp_path, *ALL_AT_ONCE)

    def both_training() -> bool:  # past start-up, with a checkpoint each: a worker still starting has none to keep
        checkpoints = all(last_checkpoint(tmp_path, name).exists() for name in ("scratch", "functional"))
        return checkpoints and len(workers(parent.pid)) == 2

    wait_for(both_training, parent)
    pids = workers(parent.pid)
    parent.kill()  # SIGKILL: the parent can do nothing; the kernel tells its workers
    parent.communicate(timeout=60)  # returns once the workers, which hold its output pipes, have ended
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10)
    for name in ("scratch", "functional"):
        assert epochs_in(last_checkpoint(tmp_path, name)) > 0  # each stopped at a checkpoint


def test_the_stop_callback_leaves_the_fast_path_alone_until_asked():
    stop = StopOnInterrupt()
    assert stop.next_observed_epoch(None, 5) is None  # else every epoch would be trained by Lightning's loop
    stop.signum = signal.SIGTERM
    assert stop.next_observed_epoch(None, 5) == 5


class SigtermAtEpochStart(Callback):
    """Sends this process SIGTERM as epoch `epoch` starts, before its batch: between two epochs."""

    def __init__(self, epoch: int = 150) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_between_epochs_stops_after_one_whole_epoch(tmp_path):
    """Asked to stop as an epoch begins, the run trains that epoch whole and checkpoints it (Lightning would
    end an epoch begun with should_stop set without its batch, yet count it: a checkpoint claiming an
    epoch it never trained, and a resumed run one epoch behind an uninterrupted one)."""
    run = ("--model", "linear", "--max_epochs", "400", "--check_val_every_n_epoch", "100")
    args = [*QUIET, *run, "--callbacks", "tests.test_signals.SigtermAtEpochStart", "--default_root_dir", str(tmp_path)]
    assert main(args) == 143
    checkpoint = torch.load(last_checkpoint(tmp_path), weights_only=True)
    assert checkpoint["epoch"] == checkpoint["global_step"] == 151
