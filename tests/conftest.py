import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlnet_lightning.baseline import one_cpu_thread
from mlnet_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
# These networks are too small to gain from threads, and on a busy machine torch's thread hand-offs
# make an epoch fifty times slower; the numbers are the same with one thread or two.
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    with one_cpu_thread():
        yield


@pytest.fixture(scope="session", autouse=True)
def plain_loops_on_one_thread() -> Iterator[None]:
    """The tests' plain loops too (the Trainer path already picks one thread for small batches)."""
    with one_cpu_thread():
        yield


def train(tmp_path: Path, *args: str) -> dict[str, dict]:
    """Run the main command in-process with its logs under tmp_path; returns summaries by model."""
    assert main(["--default_root_dir", str(tmp_path), "--enable_progress_bar", "false", *args]) == 0
    return {path.parent.parent.name: json.loads(path.read_text()) for path in tmp_path.glob("*/version_*/summary.json")}


def run_script(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a script of scripts/ in a fresh process, as a user would."""
    script, *rest = args
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *rest], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="session")
def tutorial_runs(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The default command: all five networks, 10,000 epochs each (the tutorial's runs)."""
    root = tmp_path_factory.mktemp("tutorial")
    return root, train(root, "--accelerator", "cpu")


@pytest.fixture(scope="session")
def linear_run(tmp_path_factory) -> Path:
    """The folder of a short linear run: 200 epochs, a checkpoint every 100."""
    root = tmp_path_factory.mktemp("linear_run")
    with one_cpu_thread():
        train(root, "--model", "linear", "--max_epochs", "200", "--checkpoint_every", "100")
    return root / "linear" / "version_0"
