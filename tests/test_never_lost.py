"""No run lost or misreported on the paths users take (DDP with the defaults on: tests/test_distributed.py),
last.ckpt where any run
ended, whole files under kills and full disks, one writer per run folder, damaged checkpoints. Each
runs train.py as a user does, in a process of its own."""

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from mlnet_lightning.checkpoints import CheckpointError, read_checkpoint
from mlnet_lightning.files import atomic_writer
from mlnet_lightning.models import TUTORIAL_MODELS
from tests.conftest import ONE_THREAD_ENV, ROOT, run_script
from tests.test_faults import outcome, run_folder, scalars, train_py, tree

SHORT = ("--model", "linear", "--pictures", "false", "--check_val_every_n_epoch", "50")
TRAIN_PY = (sys.executable, str(ROOT / "scripts" / "train.py"))
# The second validation (epoch 99) does not improve val/loss by 0.5: the run stops there.
EARLY_STOPPING = ("--callbacks", "EarlyStopping", "--callbacks.monitor", "val/loss", "--callbacks.patience", "1")
EARLY_STOPPING += ("--callbacks.min_delta", "0.5")


def run_train_py(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """train.py with its defaults (progress bar on) and its logs under `root`, in a process of its own."""
    command = [*TRAIN_PY, "--default_root_dir", str(root), *args]
    return subprocess.run(command, cwd=ROOT, env=env or ONE_THREAD_ENV, capture_output=True, text=True, timeout=300)


def train_to_end(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = run_train_py(root, *args, env=env)
    assert result.returncode == 0, result.stderr
    return result


def summary(run_dir: Path) -> dict:
    numbers = json.loads((run_dir / "summary.json").read_text())
    numbers.pop("fit_seconds")
    return numbers


def error_line(stderr: str) -> str:
    """The command's one error line (a progress bar may have drawn before it, on lines of its own)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("train.py: error: "), stderr
    return lines[0]


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """`folder`, made and mounted as a tmpfs of `size` (skips the test where mounting is refused)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def other_filesystem(tmp_path) -> Iterator[Path]:
    """A folder on a tmpfs of its own, as TMPDIR often is on a cluster node."""
    with tmpfs(tmp_path / "tmpfs", "64m") as folder:
        yield folder


def test_a_collective_only_some_ranks_join_ends_at_the_timeout_in_one_line(tmp_path):
    ddp = ["--strategy", "DDPStrategy", "--strategy.timeout", "0:00:10", "--devices", "2", "--accelerator", "cpu"]
    mistake = ("--callbacks", "tests.user_callbacks.CollectiveOnRankZero")
    result = run_train_py(tmp_path, *SHORT, "--max_epochs", "20", *ddp, *mistake)
    assert result.returncode == 1
    assert "linear: the 2 processes stopped waiting for each other" in error_line(result.stderr)
    assert not (run_folder(tmp_path) / "summary.json").exists()


@pytest.mark.parametrize(
    ("ended_by", "options"),
    [
        ("max_epochs", ["--max_epochs", "300"]),
        ("EarlyStopping", ["--max_epochs", "3000", *EARLY_STOPPING]),
        ("max_steps", ["--max_epochs", "3000", "--max_steps", "333"]),
    ],
)
def test_last_ckpt_is_where_the_run_ended_and_evaluates_to_its_summary(tmp_path, ended_by, options):
    table = train_to_end(tmp_path, *SHORT, *options).stdout
    run_dir = run_folder(tmp_path)
    ended = summary(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    expected = {"max_epochs": 300, "EarlyStopping": 100, "max_steps": 333}[ended_by]
    assert read_checkpoint(last)["epoch"] == ended["epochs"] == expected
    header, row = (line.split() for line in table.splitlines())
    assert dict(zip(header, row))["epochs"] == str(expected)  # the table shows an early stop
    if ended_by != "max_steps":  # these end at a validation: its accuracy is that of the last weights
        evaluated = run_script("evaluate.py", "--ckpt", str(last))
        assert evaluated.returncode == 0, evaluated.stderr
        assert f"accuracy    {ended['val_acc']:.4f}" in evaluated.stdout


def test_a_finished_run_continues_with_a_larger_max_epochs_as_if_it_had_never_stopped(tmp_path):
    train_to_end(tmp_path, *SHORT, "--max_epochs", "300")
    resumed = train_to_end(tmp_path, *SHORT, "--max_epochs", "600", "--ckpt_path", "last")
    assert "starting a new run" not in resumed.stderr
    # The config of the resumed run reruns it from the start, as the README says: the uninterrupted run.
    config = run_folder(tmp_path) / "config.yaml"
    assert "ckpt_path: null" in config.read_text()
    shutil.copy(config, tmp_path / "rerun.yaml")
    train_to_end(tmp_path, "--config", str(tmp_path / "rerun.yaml"))
    assert outcome(run_folder(tmp_path)) == outcome(run_folder(tmp_path).with_name("version_1"))


def test_a_reader_never_meets_half_a_checkpoint_with_tmpdir_on_another_filesystem(tmp_path, other_filesystem):
    """last.ckpt rewritten every epoch while it is read over and over, TMPDIR on a tmpfs."""
    env = {**ONE_THREAD_ENV, "TMPDIR": str(other_filesystem)}
    run = (*SHORT, "--max_epochs", "400", "--checkpoint_every", "1", "--default_root_dir", str(tmp_path / "run"))
    command = [*TRAIN_PY, "--enable_progress_bar", "false", *run]
    writer = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run_folder(tmp_path / "run") / "checkpoints" / "last.ckpt"
    reads, failures = 0, []
    while writer.poll() is None:
        if last.exists():
            try:
                read_checkpoint(last)
                reads += 1
            except CheckpointError as error:
                failures.append(str(error))
    assert writer.returncode == 0, writer.stderr.read()
    assert failures == [] and reads >= 20


def test_kill_9_at_random_instants_loses_and_duplicates_no_point(tmp_path, other_filesystem):
    """Three SIGKILLs at random instants of a run that checkpoints every epoch (so most land in or near a
    checkpoint's write), each followed by `--ckpt_path last`: each last.ckpt left is whole, and the
    curves end with every epoch once, equal to an uninterrupted run's."""
    run = (*SHORT, "--max_epochs", "200", "--checkpoint_every", "1")
    root = tmp_path / "parts"
    last = run_folder(root) / "checkpoints" / "last.ckpt"
    rng = random.Random(0)
    env = {**ONE_THREAD_ENV, "TMPDIR": str(other_filesystem)}
    command = [*TRAIN_PY, "--enable_progress_bar", "false", *run, "--default_root_dir", str(root)]
    for attempt in range(3):
        resume = ["--ckpt_path", "last"] if attempt else []
        victim = subprocess.Popen(
            [*command, *resume], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        started = last.stat().st_mtime if last.exists() else 0.0
        deadline = time.monotonic() + 120
        while not (last.exists() and last.stat().st_mtime > started) and victim.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        read_checkpoint(last)  # whole; a kill mid-write leaves a temporary file beside it, never in its place
    subprocess.run([*command, "--ckpt_path", "last"], cwd=ROOT, env=env, check=True, capture_output=True)
    assert not list(run_folder(root).rglob("*.part"))  # the resumed run's writer deleted what the kills left
    train_to_end(tmp_path / "whole", *run)
    parts, whole = scalars(run_folder(root)), scalars(run_folder(tmp_path / "whole"))
    assert [step for step, _ in parts["train/loss"]] == list(range(200))
    assert parts == whole
    assert summary(run_folder(root)) == summary(run_folder(tmp_path / "whole"))


def test_a_full_filesystem_ends_in_one_line_naming_the_run_folder_and_leaves_no_part(tmp_path):
    with tmpfs(tmp_path / "disk", "320k") as disk:
        run = ["--model", "linear", "--max_epochs", "3000", "--check_val_every_n_epoch", "100"]
        full = run_train_py(disk, *run)
        run_dir = run_folder(disk)
        assert full.returncode == 1
        line = error_line(full.stderr)
        assert re.search(rf"linear: cannot write (in )?{re.escape(str(run_dir))}\S*: No space left on device", line)
        assert not (run_dir / "summary.json").exists()
        files = [path for path in disk.rglob("*") if path.is_file()]
        assert not [path for path in files if path.name.endswith(".part")]
        for checkpoint in run_dir.glob("checkpoints/*.ckpt"):
            read_checkpoint(checkpoint)  # every one whole
        for picture in run_dir.glob("*.png"):
            assert picture.read_bytes().startswith(b"\x89PNG") and picture.read_bytes().endswith(b"IEND\xaeB`\x82")
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        train_to_end(disk, *run, "--ckpt_path", "last")
        assert summary(run_dir)["epochs"] == 3000


def test_a_second_resume_of_a_run_in_training_is_refused_in_one_line(tmp_path):
    train_to_end(tmp_path, *SHORT, "--max_epochs", "100")
    run = (*SHORT, "--max_epochs", "100000", "--checkpoint_every", "1000", "--ckpt_path", "last")
    first = train_py(*run, "--default_root_dir", str(tmp_path))
    events = run_folder(tmp_path)
    deadline = time.monotonic() + 120
    while len(list(events.glob("events.out.tfevents.*"))) < 2:  # the first resume is training
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = run_train_py(tmp_path, *run)
    assert second.returncode == 2
    assert f"{events} is being trained by another process" in error_line(second.stderr)
    assert len(list(events.glob("events.out.tfevents.*"))) == 2  # the refused one wrote nothing
    first.send_signal(signal.SIGKILL)  # a killed writer leaves no lock behind
    first.wait()
    trained = read_checkpoint(events / "checkpoints" / "last.ckpt")["epoch"]
    half_written = events / "checkpoints" / ".last-pending.ckpt.k1ll3d.part"  # as a kill mid-write leaves one
    half_written.write_bytes(b"PK\x03\x04")
    train_to_end(tmp_path, *SHORT, "--max_epochs", str(trained + 100), "--ckpt_path", "last")
    assert summary(events)["final_loss"] is not None
    assert not half_written.exists()  # the next writer of the run folder deletes it


def test_all_networks_stopped_after_one_ended_resume_with_the_same_command_keeping_it(tmp_path):
    """SIGTERM while the second network trains (--jobs 1: in turn, so that the first has surely ended), then
    the command with --ckpt_path last (networks in parallel, the default): the first network's ended run is
    kept as it is, the second goes on from its checkpoint, the rest train."""
    run = ("--max_epochs", "300", "--check_val_every_n_epoch", "100", "--pictures", "false", "--checkpoint_every", "1")
    parts = tmp_path / "parts"
    command = [*TRAIN_PY, *run, "--jobs", "1", "--default_root_dir", str(parts)]
    stopped = subprocess.Popen(
        command, cwd=ROOT, env=ONE_THREAD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    second = run_folder(parts, "functional") / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not second.exists():  # 300 epochs with a checkpoint each: seconds in which to stop it
        assert stopped.poll() is None and time.monotonic() < deadline, "the second network did not start in time"
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=120) == 143
    assert not (run_folder(parts, "functional") / "summary.json").exists()  # stopped, not ended
    kept = tree(run_folder(parts, "scratch"))
    resumed = train_to_end(parts, *run, "--ckpt_path", "last")
    assert f"{parts / 'scratch'} ended at 300 epochs already; keeping it" in resumed.stderr
    assert tree(run_folder(parts, "scratch")) == kept  # not a byte written
    assert [line.split()[0] for line in resumed.stdout.splitlines()[1:6]] == list(TUTORIAL_MODELS)
    train_to_end(tmp_path / "whole", *run, "--model", "functional")
    assert summary(run_folder(parts, "functional")) == summary(run_folder(tmp_path / "whole", "functional"))


def test_a_stop_in_the_last_epoch_leaves_a_run_that_has_ended(tmp_path):
    """The last epoch runs to its end either way: the run has its summary.json, and is not continued."""
    stop = ("--callbacks", "tests.user_callbacks.SigtermAt", "--callbacks.epoch", "99")
    stopped = run_train_py(tmp_path, *SHORT, "--max_epochs", "100", *stop)
    assert stopped.returncode == 143, stopped.stderr
    run_dir = run_folder(tmp_path)
    assert summary(run_dir)["epochs"] == read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 100
    again = run_train_py(tmp_path, *SHORT, "--max_epochs", "100", "--ckpt_path", "last")
    assert again.returncode == 2
    assert "has trained 100 epochs already; give more than 100 to continue it" in error_line(again.stderr)


def test_two_resumes_started_together_train_the_run_once(tmp_path, trained_100_epochs):
    """Whichever takes the run folder first trains it; the other is refused in one line, exit 2 (by the
    lock, or, if the first has already ended, as a run with no epochs left to train)."""
    shutil.copytree(trained_100_epochs, tmp_path, dirs_exist_ok=True)
    run = (*SHORT, "--max_epochs", "1100", "--ckpt_path", "last", "--default_root_dir", str(tmp_path))
    together = [subprocess.Popen([*TRAIN_PY, *run], cwd=ROOT, env=ONE_THREAD_ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    errors = [process.communicate(timeout=300)[1] for process in together]
    ended = [(process.returncode, stderr) for process, stderr in zip(together, errors)]
    assert sorted(status for status, _ in ended) == [0, 2]
    refused = next(stderr for status, stderr in ended if status == 2)
    assert re.search(r"is being trained by another process|has trained 1100 epochs already", error_line(refused))
    run_dir = run_folder(tmp_path)
    assert summary(run_dir)["epochs"] == 1100 and summary(run_dir)["final_loss"] is not None
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # the first run's and one resume's
    assert [step for step, _ in scalars(run_dir)["train/loss"]] == list(range(1100))


@pytest.fixture(scope="module")
def trained_100_epochs(tmp_path_factory) -> Path:
    """A log root holding one finished 100-epoch run, to be copied."""
    root = tmp_path_factory.mktemp("trained")
    train_to_end(root, *SHORT, "--max_epochs", "100")
    return root


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda state: state.update({"lin2.weight": torch.zeros(3, 2)}), "lin2.weight has shape [3, 2], not [4, 2]"),
        (lambda state: state.pop("lin2.bias"), "lin2.bias is missing"),
    ],
    ids=["shape", "missing"],
)
def test_a_damaged_checkpoint_is_refused_in_one_line_before_anything_is_written(
    tmp_path, trained_100_epochs, damage, named
):
    shutil.copytree(trained_100_epochs, tmp_path, dirs_exist_ok=True)
    last = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    damage(checkpoint["state_dict"])
    torch.save(checkpoint, last)
    before = tree(tmp_path)
    result = run_train_py(tmp_path, *SHORT, "--max_epochs", "200", "--ckpt_path", "last")
    assert result.returncode == 2
    assert f"{last} does not fit its network: {named}" in error_line(result.stderr)
    assert tree(tmp_path) == before


def test_a_monitor_that_names_no_metric_is_one_line_and_leaves_no_run_folder(tmp_path):
    typo = ("--callbacks", "EarlyStopping", "--callbacks.monitor", "val/los")
    result = run_train_py(tmp_path, *SHORT, "--max_epochs", "200", *typo)
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "linear: Early stopping conditioned on metric `val/los` which is not available" in line
    assert "`val/loss`" in line
    assert not list(tmp_path.rglob("version_*"))


def test_a_whole_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_writer(target) as file:
        file.write("new, half")
        assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".summary.json.")]
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["summary.json"]
