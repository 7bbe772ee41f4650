"""Data-parallel training through Lightning's DDP strategy: two CPU processes (gloo) against one."""

import json

import pytest
import torch

from mlnet_lightning.checkpoints import read_checkpoint
from mlnet_lightning.cli import main
from mlnet_lightning.data import BlobData, process_share
from tests.conftest import run_script, train


def test_each_process_keeps_an_equal_slice_of_the_training_set():
    data = BlobData()
    shares = [process_share(data.x_train, data.y_train, rank, 2, equal=True) for rank in range(2)]
    assert [len(x) for x, _ in shares] == [375, 375]
    assert torch.equal(torch.cat([x for x, _ in shares]), data.x_train)
    with pytest.warns(UserWarning, match="the last 2 left out"):
        x, y = process_share(data.x_train, data.y_train, 3, 4, equal=True)
    assert len(x) == len(y) == 187
    assert [len(process_share(data.x_val, data.y_val, rank, 4)[0]) for rank in range(4)] == [63, 63, 62, 62]
    assert process_share(data.x_val, data.y_val, 0, 1)[0] is data.x_val  # one process: all of it


def test_two_ddp_processes_end_where_one_process_does(tmp_path):
    """750 points over 2 processes: DDP's mean of two 375-point gradients is the full-batch gradient,
    at every epoch; the loss and accuracies are those of all the points."""
    options = ["--model", "sequential", "--max_epochs", "300", "--accelerator", "cpu"]
    one = train(tmp_path / "one", *options)["sequential"]
    two_root = tmp_path / "two"
    ddp = ["--devices", "2", "--strategy", "ddp", "--default_root_dir", str(two_root)]
    result = run_script("train.py", *options, *ddp)  # the defaults on: progress bar, pictures, checkpoints
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("sequential") == 1  # the table is printed by rank 0 only
    assert [p.name for p in (two_root / "sequential").iterdir()] == ["version_0"]
    assert (two_root / "sequential" / "version_0" / "decision_boundary.png").exists()  # drawn by rank 0
    # The bar reads metrics DDP reduces: every rank joins (rank 0 alone hung forever), and it draws to its end.
    assert "300/300" in result.stderr
    assert read_checkpoint(two_root / "sequential" / "version_0" / "checkpoints" / "last.ckpt")["epoch"] == 300
    two = json.loads((two_root / "sequential" / "version_0" / "summary.json").read_text())
    assert two["epochs"] == one["epochs"] == 300
    for key in ("initial_loss", "final_loss", "train_acc", "val_acc"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    assert one["final_loss"] < one["initial_loss"] - 0.05  # it trained


def test_plain_tensor_networks_are_refused_on_several_processes(tmp_path, capsys):
    status = main(["--model", "scratch", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
                   "--default_root_dir", str(tmp_path)])  # fmt: skip
    assert status == 2
    assert "DistributedDataParallel" in capsys.readouterr().err
