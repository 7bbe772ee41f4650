"""--jobs: networks trained at once in worker processes give the numbers they give one by one."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from mlnet_lightning.cli import build_parser
from mlnet_lightning.models import TUTORIAL_MODELS
from mlnet_lightning.parallel import auto_jobs
from tests.conftest import ONE_THREAD_ENV, ROOT, run_script, train
from tests.test_resume import wait_for, without_time


def test_networks_trained_at_once_give_the_numbers_of_one_by_one(tmp_path):
    one_by_one = train(tmp_path / "one", "--max_epochs", "300", "--jobs", "1")
    at_once = train(tmp_path / "three", "--max_epochs", "300", "--jobs", "3")
    assert set(at_once) == set(TUTORIAL_MODELS)
    assert {name: without_time(s) for name, s in at_once.items()} == {
        name: without_time(s) for name, s in one_by_one.items()
    }


def test_the_parent_draws_every_workers_bar_and_one_table(tmp_path):
    done = run_script("train.py", "--max_epochs", "200", "--jobs", "5", "--default_root_dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for model_class in TUTORIAL_MODELS.values():
        assert f"{model_class.__name__}: 100%" in done.stderr and "200/200" in done.stderr
    rows = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert rows == list(TUTORIAL_MODELS)  # in the networks' order, whichever finished first


def test_a_network_that_diverges_among_others_fails_in_one_line(tmp_path):
    options = ["--lr", "1000", "--max_epochs", "300", "--jobs", "2", "--default_root_dir", str(tmp_path)]
    failed = run_script("train.py", *options)
    assert failed.returncode == 1
    assert "training diverged" in failed.stderr and "Traceback" not in failed.stderr and "Warning" not in failed.stderr
    assert failed.stderr.count("error:") == 1


def start_long_run(root: Path, jobs: int) -> subprocess.Popen:
    """train.py --model all for 100,000 epochs, in a process group of its own, to be signalled."""
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--max_epochs", "100000", "--jobs", str(jobs)]
    command += ["--checkpoint_every", "100", "--enable_progress_bar", "false", "--default_root_dir", str(root)]
    return subprocess.Popen(
        command, cwd=ROOT, env=ONE_THREAD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def last_checkpoint(root: Path, name: str) -> Path:
    return root / name / "version_0" / "checkpoints" / "last.ckpt"


def test_ctrl_c_stops_every_worker_at_a_checkpoint(tmp_path):
    run = start_long_run(tmp_path, jobs=5)
    wait_for(lambda: all(last_checkpoint(tmp_path, name).exists() for name in TUTORIAL_MODELS), run)
    os.killpg(run.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130
    assert "Traceback" not in stderr and "--ckpt_path last" in stderr
    assert [line.split()[0] for line in stdout.splitlines()[1:]] == list(TUTORIAL_MODELS)  # the table so far
    assert not list(Path(tmp_path).glob("*/version_0/summary.json"))  # none looks finished


def test_by_default_one_process_a_core_plus_those_that_would_end_alone(monkeypatch):
    """Five networks on two cores: three at once, then two (none left alone at the end, fewer sharing a
    core); on one core or a GPU, one process."""
    on_cpu = build_parser().parse_args(["--accelerator", "cpu"])
    for cores, networks, jobs in ((2, 5, 3), (4, 5, 5), (3, 5, 5), (16, 5, 5), (2, 1, 1), (2, 4, 2), (1, 5, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert auto_jobs(on_cpu, networks) == jobs, (cores, networks)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert auto_jobs(build_parser().parse_args(["--accelerator", "cpu", "--devices", "2"]), 5) == 1
