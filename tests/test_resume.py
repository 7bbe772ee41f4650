"""Runs that survive: SIGKILL and resume, Ctrl-C, divergence, and the same numbers from the same seed."""

import math
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from mlnet_lightning.cli import main
from mlnet_lightning.inference import evaluate_main
from tests.conftest import ONE_THREAD_ENV, ROOT, train
from tests.test_tutorial import read_scalars as read_all_scalars


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The curves: every scalar but the HPARAMS metrics, which each session writes once."""
    return {tag: points for tag, points in read_all_scalars(run_dir).items() if not tag.startswith("hp/")}


# 3 shuffled mini-batches an epoch, a validation and a checkpoint every 10 epochs: the shuffling, the
# optimizer's state and Lightning's step count (the loggers' x axis) all have to survive an interruption.
RUN = ("--model", "linear", "--max_epochs", "300", "--data.batch_size", "250", "--seed", "7")
RUN += ("--check_val_every_n_epoch", "10", "--checkpoint_every", "10")
LAST_EPOCH = 299

pytestmark = pytest.mark.usefixtures("one_thread")


def start(root: Path) -> subprocess.Popen:
    """train.py in a process of its own, to be signalled."""
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *RUN]
    command += ["--enable_progress_bar", "false", "--default_root_dir", str(root)]
    return subprocess.Popen(
        command, cwd=ROOT, env=ONE_THREAD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "the run made no checkpoint in time"
        time.sleep(0.02)


def epoch_of(checkpoint: Path) -> int:
    """The epoch whose end a checkpoint saved."""
    return torch.load(checkpoint, weights_only=True)["epoch"]


def logged_up_to(run_dir: Path, epoch: int) -> bool:
    """Whether the run's TensorBoard files hold its training points up to `epoch`'s."""
    losses = read_scalars(run_dir).get("train/loss", [])
    return len(losses) > epoch


def without_time(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if key != "fit_seconds"}


@pytest.fixture(scope="module")
def uninterrupted(one_thread, tmp_path_factory) -> tuple[dict, dict]:
    """Summary and TensorBoard curves of RUN trained in one go."""
    root = tmp_path_factory.mktemp("uninterrupted")
    summary = train(root, *RUN)["linear"]
    scalars = read_scalars(root / "linear" / "version_0")
    # One point per epoch, at the step that ends it (3 optimizer steps an epoch), and no others
    assert set(scalars) == {"train/loss", "train/acc", "val/loss", "val/acc", "epoch"}
    assert [step for step, _ in scalars["train/loss"]] == list(range(2, 3 * (LAST_EPOCH + 1), 3))
    assert [step for step, _ in scalars["val/acc"]] == list(range(29, 3 * (LAST_EPOCH + 1), 30))
    return summary, scalars


def test_a_killed_run_resumes_to_the_uninterrupted_numbers_and_curves(tmp_path, uninterrupted):
    run_dir = tmp_path / "linear" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    victim = start(tmp_path)
    wait_for(last.exists, victim)
    early = Path(shutil.copy(last, run_dir / "checkpoints" / "early.ckpt"))
    # A checkpoint is saved at its epoch's end just before Lightning logs that epoch: wait for the points
    # too, as a kill in between loses the epoch's point (Lightning's order; see the migration report).
    wait_for(lambda: epoch_of(last) > epoch_of(early) and logged_up_to(run_dir, epoch_of(last)), victim)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert epoch_of(last) < LAST_EPOCH and not (run_dir / "summary.json").exists()

    summary = train(tmp_path, *RUN, "--ckpt_path", "last")["linear"]
    assert [path.name for path in (tmp_path / "linear").iterdir()] == ["version_0"]  # the same run folder
    assert without_time(summary) == without_time(uninterrupted[0])
    assert read_scalars(run_dir) == uninterrupted[1]  # every epoch once, with the same values

    # From an earlier checkpoint, epochs that are already on disk are written again; TensorBoard keeps one of each.
    summary = train(tmp_path, *RUN, "--ckpt_path", str(early))["linear"]
    assert without_time(summary) == without_time(uninterrupted[0])
    assert read_scalars(run_dir) == uninterrupted[1]


def test_ctrl_c_prints_the_summary_so_far_exits_130_and_resumes_exactly(tmp_path, uninterrupted):
    run_dir = tmp_path / "linear" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    victim = start(tmp_path)
    wait_for(last.exists, victim)
    victim.send_signal(signal.SIGINT)
    stdout, stderr = victim.communicate(timeout=120)
    assert victim.returncode == 130
    assert "Traceback" not in stderr and "--ckpt_path last" in stderr
    stopped = torch.load(last, weights_only=True)
    assert stopped["epoch"] < LAST_EPOCH
    model, _, final_loss, train_acc, val_acc, *_ = stdout.splitlines()[1].split()
    assert model == "linear"  # the summary so far: the newest numbers on the curves
    scalars = read_scalars(run_dir)
    assert scalars["train/loss"][-1][0] == stopped["global_step"] - 1  # the checkpoint holds every epoch trained
    newest = {tag: points[-1][1] for tag, points in scalars.items()}
    assert float(final_loss) == pytest.approx(newest["train/loss"], abs=1e-6)
    assert (float(train_acc), float(val_acc)) == pytest.approx((newest["train/acc"], newest["val/acc"]), abs=1e-4)
    assert not (run_dir / "summary.json").exists()  # an interrupted run does not look finished

    summary = train(tmp_path, *RUN, "--ckpt_path", "last")["linear"]
    assert without_time(summary) == without_time(uninterrupted[0])
    assert read_scalars(run_dir) == uninterrupted[1]


def test_the_same_command_gives_the_same_summary_and_logs_its_seed(tmp_path, uninterrupted):
    summary = train(tmp_path, *RUN)["linear"]
    assert without_time(summary) == without_time(uninterrupted[0])
    hparams = yaml.safe_load((tmp_path / "linear" / "version_0" / "hparams.yaml").read_text())
    assert hparams["seed"] == 7


def test_a_diverging_run_stops_at_its_first_nan_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # The tutorial's hand-written softmax overflows at this learning rate within tens of epochs (where
    # exactly depends on the processor's exp: epoch 11 on one, later on others).
    options = ["--model", "scratch", "--lr", "100", "--max_epochs", "600", "--checkpoint_every", "5"]
    assert main([*options, "--default_root_dir", str(tmp_path), "--enable_progress_bar", "false"]) == 1
    stdout, stderr = capsys.readouterr()
    assert stdout == ""  # no summary table
    last = tmp_path / "scratch" / "version_0" / "checkpoints" / "last.ckpt"
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    diverged_at = int(re.search(r"nan at epoch (\d+)", stderr).group(1))
    assert "diverged" in stderr and diverged_at >= 5 and str(last) in stderr
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == diverged_at // 5 * 5 - 1  # the last checkpoint before the NaN
    assert all(tensor.isfinite().all() for tensor in checkpoint["state_dict"].values())
    losses = read_scalars(tmp_path / "scratch" / "version_0")["train/loss"]
    assert losses[-1][0] < diverged_at and all(math.isfinite(loss) for _, loss in losses)  # no NaN on the curve
    assert not list(tmp_path.rglob("summary.json"))


PLAIN_NET = """
import lightning as L
import torch
import torch.nn.functional as F


class PlainNet(L.LightningModule):
    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(2, 4)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch):
        self.log("val/acc", (self(batch[0]).argmax(-1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
"""


def test_a_plain_lightning_module_resumes_exactly_too(tmp_path, monkeypatch, capsys):
    """Its initial weights come from --seed and its shuffles from the Trainer's epoch, not from a counter."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain_net.py").write_text(PLAIN_NET)
    options = ("--model", "plain_net.PlainNet", "--data.batch_size", "250", "--check_val_every_n_epoch", "10")
    options += ("--checkpoint_every", "10")
    uninterrupted = train(tmp_path / "whole", *options, "--max_epochs", "20")["plainnet"]
    train(tmp_path / "parts", *options, "--max_epochs", "10")
    resumed = train(tmp_path / "parts", *options, "--max_epochs", "20", "--ckpt_path", "last")["plainnet"]
    assert resumed["epochs"] == 20 and without_time(resumed) == without_time(uninterrupted)
    run_dir = tmp_path / "parts" / "plainnet" / "version_0"
    assert read_scalars(run_dir) == read_scalars(tmp_path / "whole" / "plainnet" / "version_0")
    # evaluate.py imports the network from the working directory too, and judges its outputs to be logits
    capsys.readouterr()
    assert evaluate_main(["--ckpt", str(run_dir / "checkpoints" / "last.ckpt")]) == 0
    accuracy = capsys.readouterr().out.split("accuracy")[1].split()[0]
    assert float(accuracy) == pytest.approx(resumed["val_acc"], abs=1e-4)
