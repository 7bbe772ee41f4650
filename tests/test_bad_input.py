"""Every bad input gets one line naming the problem, exit status 2, no traceback, and no finished-looking run."""

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from mlnet_lightning.cli import build_parser, main, parse
from mlnet_lightning.inference import evaluate_main, predict_main
from tests.conftest import run_script

PROGRAMS = {"train.py": main, "evaluate.py": evaluate_main, "predict.py": predict_main}
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
CSV_FILES = {
    "empty.csv": "",
    "header_only.csv": "x1,x2\n",
    "three_columns.csv": "x1,x2\n1.0,2.0\n1.0,2.0,3.0\n",
    "one_column.csv": "1.0\n",
    "word.csv": "1.0,2.0\n0.5,abc\n",
    "nan.csv": "1.0,nan\n",
    "infinite.csv": "inf,2.0\n",
    "blank_cell.csv": "1.0,\n",
    "labelled.csv": "x1,x2,label\n1.0,2.0,3\n",
    "labelled_header_only.csv": "x1,x2,label\n",
    "labelled_word.csv": "1.0,2.0,0\n0.5,abc,1\n",
    "bad_label.csv": "1.0,2.0,7\n",
    "fraction_label.csv": "1.0,2.0,1.5\n",
}


def predicting(points: str, output: str = "{out}", ckpt: str = "{ckpt}") -> list[str]:
    return ["--ckpt", ckpt, "--input", points, "--output", output]


CASES = [
    # train.py: options
    ("train.py", ["--model", "resnet"], ["unknown model", "resnet"]),
    ("train.py", ["--bogus", "1"], ["unrecognized", "--bogus"]),
    ("train.py", ["--lr", "0"], ["lr", "0"]),
    ("train.py", ["--lr", "-1"], ["lr", "-1"]),
    ("train.py", ["--lr", "fast"], ["lr", "fast"]),
    ("train.py", ["--max_epochs", "fast"], ["--max_epochs", "int"]),
    ("train.py", ["--max_epochs", "-5"], ["max_epochs", "-5"]),
    pytest.param("train.py", ["--accelerator", "gpu"], ["--accelerator gpu", "no CUDA GPU"], marks=NO_GPU),
    ("train.py", ["--accelerator", "cpu", "--devices", "999"], ["--devices 999", "CPU cores"]),
    ("train.py", ["--jobs", "2", "--devices", "2"], ["--jobs 2", "CPU only"]),
    ("train.py", ["--jobs", "0"], ["jobs", "0"]),
    ("train.py", ["--default_root_dir", "{a_file}/logs"], ["cannot write to the log folder", "{a_file}/logs"]),
    ("train.py", ["--model", "linear", "--default_root_dir", "{file_in_root}"], ["{file_in_root}/linear", "Not a dir"]),
    ("train.py", ["--default_root_dir", "{dangling}"], ["cannot write to the log folder", "broken symbolic link"]),
    # train.py: numbers beyond what the run holds (float32, int64, torch.manual_seed)
    ("train.py", ["--lr", "1e39"], ["--lr: 1e+39", "beyond float32's range", "3.4e+38"]),
    ("train.py", ["--model", "linear", "--lrs", "0.1,1e39"], ["--lrs: 1e+39", "beyond float32's range"]),
    ("train.py", ["--optimizer", "Adam", "--optimizer.lr", "1e39"], ["--optimizer.lr: 1e+39", "float32"]),
    ("train.py", ["--data", "MoonsData", "--data.noise", "1e39"], ["--data.noise: 1e+39", "float32"]),
    ("train.py", ["--data.cluster_std=-1e39"], ["--data.cluster_std: -1e+39", "float32"]),
    ("train.py", ["--max_epochs", str(2**70)], [f"--max_epochs: {2**70}", "int64"]),
    ("train.py", ["--seed", str(2**70)], [f"--seed: {2**70}", "torch.manual_seed", "-2**63 to 2**64 - 1"]),
    ("train.py", ["--seed", str(2**64 - 1), "--seeds", "3"], ["--seeds 3", f"{2**64 + 1}", "2**64 - 1"]),
    # train.py: data sets too small to split, too large for the memory
    ("train.py", ["--data.n_samples", "10"], ["n_samples 10", "4 classes", "least 13", "7 training", "3 val"]),
    ("train.py", ["--data", "MoonsData", "--data.n_samples", "4", "--data.test_size", "9"], ["least 5", "test_size 9"]),
    ("train.py", ["--data.n_samples", str(10**12)], ["--data.n_samples 1000000000000", "100 TB", "available"]),
    ("train.py", ["--data.n_samples", "1000", "--data.test_size", str(10**12)], ["n_samples 1000 and test_size"]),
    ("train.py", ["--data.seed", "-1"], ["--data.seed", "2**32 - 1", "-1"]),
    # train.py: resuming
    ("train.py", ["--model", "linear", "--ckpt_path", "{missing}"], ["{missing}", "does not exist"]),
    ("train.py", ["--model", "linear", "--ckpt_path", "{truncated}"], ["{truncated}", "truncated"]),
    ("train.py", ["--model", "linear", "--ckpt_path", "{empty}"], ["{empty}", "truncated"]),
    ("train.py", ["--model", "linear", "--ckpt_path", "{foreign}"], ["{foreign}", "not a checkpoint written by"]),
    ("train.py", ["--model", "sequential", "--ckpt_path", "{ckpt}"], ["another network", "Linear", "Sequential"]),
    ("train.py", ["--model", "linear", "--lr", "0.5", "--ckpt_path", "{ckpt}"], ["lr=0.2", "0.5"]),
    ("train.py", ["--model", "linear", "--data.batch_size", "8", "--ckpt_path", "{ckpt}"], ["data.batch_size=None"]),
    ("train.py", ["--ckpt_path", "{ckpt}"], ["--ckpt_path PATH", "--model"]),
    # evaluate.py
    ("evaluate.py", [], ["ckpt", "required"]),
    ("evaluate.py", ["--ckpt", "{missing}"], ["{missing}", "does not exist"]),
    ("evaluate.py", ["--ckpt", "{tmp}"], ["{tmp}", "is a folder"]),
    ("evaluate.py", ["--ckpt", "{truncated}"], ["{truncated}", "truncated"]),
    ("evaluate.py", ["--ckpt", "{foreign}"], ["{foreign}", "not a checkpoint written by"]),
    ("evaluate.py", ["--ckpt", "{ckpt}", "--data", "{tmp}/missing.csv"], ["missing.csv", "does not exist"]),
    ("evaluate.py", ["--ckpt", "{ckpt}", "--data", "{tmp}/empty.csv"], ["empty.csv", "no points"]),
    ("evaluate.py", ["--ckpt", "{ckpt}", "--data", "{tmp}/labelled_header_only.csv"], ["header", "no points"]),
    ("evaluate.py", ["--ckpt", "{ckpt}", "--data", "{tmp}/labelled_word.csv"], ["line 2", "'abc'", "not a number"]),
    ("evaluate.py", ["--ckpt", "{ckpt}", "--data", "{tmp}/bad_label.csv"], ["line 1", "label '7'", "0 to 3"]),
    ("evaluate.py", ["--ckpt", "{ckpt}", "--data", "{tmp}/fraction_label.csv"], ["label '1.5'"]),
    ("evaluate.py", ["--ckpt", "{ckpt}", "--data", "{tmp}/nan.csv"], ["line 1", "2 columns", "x1,x2,label"]),
    # predict.py
    ("predict.py", ["--ckpt", "{ckpt}", "--input", "{tmp}/empty.csv"], ["output", "required"]),
    ("predict.py", predicting("{good}", ckpt="{truncated}"), ["truncated"]),
    ("predict.py", predicting("{tmp}/missing.csv"), ["does not exist"]),
    ("predict.py", predicting("{tmp}"), ["cannot read", "directory"]),
    ("predict.py", predicting("{binary}"), ["cannot read", "not a text"]),
    ("predict.py", predicting("{tmp}/empty.csv"), ["no points", "empty"]),
    ("predict.py", predicting("{tmp}/header_only.csv"), ["no points"]),
    ("predict.py", predicting("{tmp}/three_columns.csv"), ["line 3", "3 columns", "expected 2"]),
    ("predict.py", predicting("{tmp}/one_column.csv"), ["line 1", "1 column,"]),
    ("predict.py", predicting("{tmp}/labelled.csv"), ["3 columns", "x1,x2"]),
    ("predict.py", predicting("{tmp}/word.csv"), ["line 2", "'abc'", "not a number"]),
    ("predict.py", predicting("{tmp}/blank_cell.csv"), ["line 1", "'' is not a number"]),
    ("predict.py", predicting("{tmp}/nan.csv"), ["line 1", "'nan'", "not a finite number"]),
    ("predict.py", predicting("{tmp}/infinite.csv"), ["'inf'", "not a finite number"]),
    ("predict.py", predicting("{good}", output="{tmp}"), ["cannot write predictions", "directory"]),
]


@pytest.fixture
def paths(tmp_path, linear_run) -> dict[str, str]:
    """The files the cases name: a good checkpoint, broken and foreign ones, and CSVs good and bad."""
    checkpoint = linear_run / "checkpoints" / "last.ckpt"
    data = checkpoint.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    torch.save({"state_dict": {"weight": torch.zeros(2, 2)}}, tmp_path / "foreign.ckpt")
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "file_in_root").mkdir()
    (tmp_path / "file_in_root" / "linear").write_text("not the network's folder")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)))
    (tmp_path / "good.csv").write_text("1.0,2.0\n")
    for name, text in CSV_FILES.items():
        (tmp_path / name).write_text(text)
    files = {"truncated": "truncated.ckpt", "empty": "empty.ckpt", "foreign": "foreign.ckpt", "missing": "missing.ckpt"}
    files |= {"a_file": "a_file", "binary": "binary.csv", "good": "good.csv", "out": "predictions.csv"}
    files |= {"file_in_root": "file_in_root", "dangling": "dangling"}
    return {key: str(tmp_path / name) for key, name in files.items()} | {"tmp": str(tmp_path), "ckpt": str(checkpoint)}


@pytest.mark.parametrize(("program", "args", "named"), CASES)
def test_bad_input_is_one_line_naming_the_problem(program, args, named, paths, tmp_path, capsys):
    argv = [arg.format(**paths) for arg in args]
    if program == "train.py":  # its logs go under tmp_path; the case's own options come last and win
        argv = ["--default_root_dir", f"{tmp_path}/logs", "--enable_progress_bar", "false", "--max_epochs", "5", *argv]
    assert PROGRAMS[program](argv) == 2
    stdout, stderr = capsys.readouterr()
    assert stderr.startswith(f"{program}: error: ") and stderr.count("\n") == 1, stderr
    for words in named:
        assert words.format(**paths) in stderr
    assert "Traceback" not in stdout + stderr
    assert not list(tmp_path.rglob("summary.json")) and not list(tmp_path.rglob("version_*"))
    assert not (tmp_path / "predictions.csv").exists()
    assert not (tmp_path / "logs").exists() and not (tmp_path / "nowhere").exists()
    assert [path.name for path in (tmp_path / "file_in_root").iterdir()] == ["linear"]


def test_a_data_set_too_large_is_refused_before_any_point_is_drawn(tmp_path):
    """In a process of its own, as a user runs it: the check refuses at once, and allocates nothing."""
    started = time.monotonic()
    ran = run_script("train.py", "--model", "sequential", "--default_root_dir", str(tmp_path / "logs"),
                     "--max_epochs", "5", "--data.n_samples", str(10**12))  # fmt: skip
    assert ran.returncode == 2 and ran.stderr.count("\n") == 1, ran.stderr
    assert ran.stderr.startswith("train.py: error: --data.n_samples 1000000000000: ") and "of memory" in ran.stderr
    assert "Traceback" not in ran.stdout + ran.stderr
    assert not (tmp_path / "logs").exists()
    assert time.monotonic() - started < 60  # the imports' seconds, not the drawing's


def test_a_learning_rate_beyond_float32_is_one_line_in_a_process(tmp_path):
    ran = run_script("train.py", "--model", "sequential", "--default_root_dir", str(tmp_path / "logs"),
                     "--max_epochs", "5", "--lr", "1e39")  # fmt: skip
    assert ran.returncode == 2, ran.stderr
    assert ran.stderr == (
        "train.py: error: --lr: 1e+39 is beyond float32's range, ±3.4e+38 (the networks train in float32)\n"
    )
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--seed", str(2**64 - 1)],
        ["--seed", str(-(2**63))],
        ["--lr", "3.4e38"],
        ["--data.n_samples", "13"],
        ["--data", "MoonsData", "--data.n_samples", "5"],
        ["--data.seed", str(2**32 - 1)],
        ["--max_epochs", str(2**63 - 1)],
    ],
)
def test_the_edges_of_the_ranges_are_accepted(args, tmp_path):
    parse(build_parser(), ["--model", "linear", "--default_root_dir", str(tmp_path), *args])


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` as a read-only file system: as root, permissions do not stop a write, a read-only mount does."""
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot mount here: {bound.stderr.strip()}")
    try:
        remounted = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True)
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remounted.stderr.strip()}")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def test_a_read_only_network_folder_is_one_line_before_training(tmp_path, capsys):
    """The log root is writable but the folder a new run makes its version_N in is not."""
    networks = tmp_path / "logs" / "linear"
    networks.mkdir(parents=True)
    with read_only(networks):
        argv = ["--model", "linear", "--default_root_dir", str(tmp_path / "logs"), "--max_epochs", "5"]
        assert main([*argv, "--enable_progress_bar", "false"]) == 2
    stderr = capsys.readouterr().err
    assert stderr == f"train.py: error: cannot write to the log folder {networks}: Read-only file system\n"
    assert files_under(tmp_path / "logs") == [networks]


def test_a_read_only_run_folder_is_one_line_before_resuming(tmp_path, linear_run, capsys):
    """--ckpt_path last goes on writing in the run's own version_N: it must be writable too."""
    run = tmp_path / "logs" / "linear" / "version_0"
    shutil.copytree(linear_run, run)
    before = files_under(tmp_path / "logs")
    with read_only(run):
        argv = ["--model", "linear", "--default_root_dir", str(tmp_path / "logs"), "--max_epochs", "300"]
        assert main([*argv, "--ckpt_path", "last", "--enable_progress_bar", "false"]) == 2
    stderr = capsys.readouterr().err
    assert stderr == f"train.py: error: cannot write to the log folder {run}: Read-only file system\n"
    assert files_under(tmp_path / "logs") == before
