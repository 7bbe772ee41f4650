"""What the commands print is true of what they ran: a reader that has gone ends them as it ends any writer
(status 141, the run's files complete), and the tutorial's rows beneath a --logits run are its numbers."""

import json
import subprocess
import sys

import pytest

from mlnet_lightning.reference import TUTORIAL
from tests.conftest import ONE_THREAD_ENV, ROOT, run_script

SHORT_RUN = ("--model", "linear", "--max_epochs", "20", "--pictures", "false", "--enable_progress_bar", "false")


@pytest.mark.parametrize(("script", "run_folder"), [("train.py", "linear"), ("compare.py", "compare/linear")])
def test_a_reader_that_has_gone_ends_a_finished_run_with_141_and_no_traceback(tmp_path, script, run_folder):
    """As `train.py | head -1` once head has exited: the table, written last, finds no reader."""
    command = [sys.executable, str(ROOT / "scripts" / script), *SHORT_RUN, "--default_root_dir", str(tmp_path)]
    writer = subprocess.Popen(command, cwd=ROOT, env=ONE_THREAD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer.stdout.close()  # the reader goes before the table is printed
    stderr = writer.stderr.read().decode()
    assert writer.wait(timeout=300) == 141
    assert stderr == ""  # nothing more said, no traceback
    summary = json.loads((tmp_path / run_folder / "version_0" / "summary.json").read_text())
    assert summary["epochs"] == 20 and summary["final_loss"] < summary["initial_loss"]


def table_rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()[1:]]


def test_the_tutorial_rows_beneath_logits_runs_are_the_tutorials_numbers_for_what_ran(tmp_path):
    """--logits: scratch, whose loss takes one softmax either way, keeps the tutorial's row, which its run
    reproduces; the others change (functional and parameter reach scratch's numbers, linear and sequential
    LOGITS_FIX's), and the tutorial published no full row for them: none is shown."""
    result = run_script("train.py", "--logits", "true", "--accelerator", "cpu", "--enable_progress_bar", "false",
                        "--default_root_dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == ["scratch", "tutorial", "functional", "parameter", "linear", "sequential"]
    scratch = json.loads((tmp_path / "scratch" / "version_0" / "summary.json").read_text())
    reference = TUTORIAL["scratch"]
    for key in ("initial_loss", "final_loss"):
        assert scratch[key] == pytest.approx(reference[key], abs=1e-6), key
    for key in ("train_acc", "val_acc"):
        assert round(scratch[key], 4) == reference[key], key  # the tutorial's accuracies are rounded so
    numbers = ("initial_loss", "final_loss", "train_acc", "val_acc")
    cells = [f"{reference[key]:.6f}" if "loss" in key else f"{reference[key]:.4f}" for key in numbers]
    assert rows[1][1:] == [*cells, "10000"]  # and the epochs the tutorial trained
