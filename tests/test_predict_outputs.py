"""predict.py and evaluate.py run as a user runs them: a number the network cannot hold, or an output it cannot
give, is refused in one line; a file of any length is read a chunk at a time in bounded memory; and the
predictions are written whole or not at all, to a file or to stdout."""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from mlnet_lightning.checkpoints import load_run
from mlnet_lightning.inference import CHUNK_ROWS, predict
from tests.conftest import ROOT, run_script
from tests.test_inference import read_csv

MEGABYTE = 1024  # ru_maxrss counts kilobytes on Linux


@pytest.fixture
def checkpoint(linear_run) -> Path:
    return linear_run / "checkpoints" / "last.ckpt"


def random_points(count: int) -> torch.Tensor:
    return torch.randn(count, 2, generator=torch.Generator().manual_seed(count)) * 3


def points_csv(path: Path, points: torch.Tensor, tail: str = "") -> Path:
    """The points as a CSV with a header, each cell as Python writes the float; then `tail`, as written."""
    path.write_text("x1,x2\n" + "".join(f"{x1!r},{x2!r}\n" for x1, x2 in points.tolist()) + tail)
    return path


def predicting(checkpoint: Path, points: Path, output: Path | str) -> list[str]:
    return ["predict.py", "--ckpt", str(checkpoint), "--input", str(points), "--output", str(output)]


def assert_one_error_line(result: subprocess.CompletedProcess, status: int, line: str) -> None:
    assert (result.returncode, result.stderr) == (status, line + "\n"), result.stderr
    assert result.stdout == ""


@contextmanager
def full_disk(folder: Path) -> Iterator[Path]:
    """`folder` as a 64 KiB filesystem of its own: writing more fails with "No space left on device"."""
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    except OSError as error:
        pytest.skip(f"cannot run mount: {error}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_value_beyond_float32_is_refused_by_predict(checkpoint, tmp_path):
    points = tmp_path / "points.csv"
    points.write_text("x1,x2\n0.5,0.5\n1e300,-1e300\n")
    result = run_script(*predicting(checkpoint, points, tmp_path / "predictions.csv"))
    expected = f"{points} line 3: '1e300' is too large for the network's float32 numbers (at most ±3.4028235e+38)"
    assert_one_error_line(result, 2, f"predict.py: error: {expected}")
    assert sorted(os.listdir(tmp_path)) == ["points.csv"]


def test_a_value_beyond_float32_is_refused_by_evaluate(checkpoint, tmp_path):
    points = tmp_path / "labelled.csv"
    points.write_text("0.5,0.5,1\n0.5,-3.5e38,0\n")
    result = run_script("evaluate.py", "--ckpt", str(checkpoint), "--data", str(points))
    expected = f"{points} line 2: '-3.5e38' is too large for the network's float32 numbers (at most ±3.4028235e+38)"
    assert_one_error_line(result, 2, f"evaluate.py: error: {expected}")


def test_a_network_output_that_is_not_finite_is_refused(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["lin1.weight"][0, 0] = float("inf")  # 0 * inf: NaN for a point whose x1 is 0
    broken = tmp_path / "broken.ckpt"
    torch.save(state, broken)
    points = tmp_path / "points.csv"
    points.write_text("1.0,1.0\n0.0,1.0\n2.0,0.0\n")
    result = run_script(*predicting(broken, points, tmp_path / "predictions.csv"))
    expected = f"{points} line 2: the network's class probabilities for this point are not finite (nan,nan,nan,nan)"
    assert_one_error_line(result, 1, f"predict.py: error: {expected}")
    assert sorted(os.listdir(tmp_path)) == ["broken.ckpt", "points.csv"]


def test_chunks_predict_what_one_pass_over_all_points_does_to_a_file_or_stdout(checkpoint, tmp_path):
    count = 2 * CHUNK_ROWS + 1000
    points = random_points(count)
    csv_path = points_csv(tmp_path / "points.csv", points)
    output = tmp_path / "predictions.csv"
    to_file = run_script(*predicting(checkpoint, csv_path, output))
    assert (to_file.returncode, to_file.stdout) == (0, "")
    assert to_file.stderr == f"predict.py: {count} predictions written to {output}\n"
    header, *rows = read_csv(output)
    assert header == ["x1", "x2", "class", "p0", "p1", "p2", "p3"]
    assert [row[:2] for row in rows] == read_csv(csv_path)[1:]  # the cells as written
    classes, probabilities = predict(load_run(checkpoint)[0], points)
    assert [int(row[2]) for row in rows] == classes.tolist()
    written = torch.tensor([[float(p) for p in row[3:]] for row in rows])
    torch.testing.assert_close(written, probabilities, atol=1e-7, rtol=1e-6)

    to_stdout = run_script(*predicting(checkpoint, csv_path, "-"), cwd=tmp_path)
    assert to_stdout.returncode == 0
    assert to_stdout.stdout == output.read_text()
    assert to_stdout.stderr == f"predict.py: {count} predictions written to stdout\n"
    assert sorted(os.listdir(tmp_path)) == ["points.csv", "predictions.csv"]  # no file named "-"


def peak_memory_kb(*args: str) -> int:
    """The peak resident memory of a script run in a process of its own, as a user runs it."""
    measure = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    measure += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    script, *rest = args
    command = [sys.executable, "-c", measure, sys.executable, str(ROOT / "scripts" / script), *rest]
    return int(subprocess.run(command, capture_output=True, text=True, check=True, timeout=600).stdout)


def test_predict_memory_stays_bounded_whatever_the_file_length(checkpoint, tmp_path):
    peaks = {}
    for count in (30_000, 300_000):
        csv_path = points_csv(tmp_path / f"{count}.csv", random_points(count))
        peaks[count] = peak_memory_kb(*predicting(checkpoint, csv_path, tmp_path / f"{count}.out.csv"))
    # Reading the whole file took about 1 KB a row: 266 MB more for the ten times longer file. A chunk at a
    # time, only the 35,536 more rows of its full chunks count: 44 MB more.
    assert peaks[300_000] - peaks[30_000] < 100 * MEGABYTE, peaks


@pytest.mark.parametrize("old_output", [False, True])
def test_a_full_disk_leaves_no_part_of_the_predictions(checkpoint, tmp_path, old_output):
    csv_path = points_csv(tmp_path / "points.csv", random_points(5000))  # 400 KB of predictions
    with full_disk(tmp_path / "full") as folder:
        output = folder / "predictions.csv"
        if old_output:
            output.write_text("x1,x2,class,p0,p1,p2,p3\n0,0,1,0.1,0.6,0.2,0.1\n")
        old = output.read_bytes() if old_output else None
        result = run_script(*predicting(checkpoint, csv_path, output))
        assert_one_error_line(
            result, 1, f"predict.py: error: cannot write predictions to {output}: No space left on device"
        )
        assert os.listdir(folder) == (["predictions.csv"] if old_output else [])  # no .part left either
        if old_output:
            assert output.read_bytes() == old


def test_a_bad_row_after_the_first_chunk_leaves_the_old_predictions(checkpoint, tmp_path):
    count = CHUNK_ROWS + 100
    csv_path = points_csv(tmp_path / "points.csv", random_points(count), tail="0.5,abc\n")
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / "predictions.csv"
    output.write_text("old\n")
    result = run_script(*predicting(checkpoint, csv_path, output))
    assert_one_error_line(result, 2, f"predict.py: error: {csv_path} line {count + 2}: 'abc' is not a number")
    assert os.listdir(folder) == ["predictions.csv"] and output.read_text() == "old\n"
