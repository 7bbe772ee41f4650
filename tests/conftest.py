import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlnet_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]


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
