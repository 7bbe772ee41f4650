"""Data-parallel training through Lightning's DDP strategy: two CPU processes (gloo) against one."""

import json

import pytest

from mlnet_lightning.cli import main
from mlnet_lightning.data import BlobData
from tests.conftest import run_script, train


def test_each_process_keeps_an_equal_slice_of_the_training_set():
    shares = []
    for rank in range(2):
        data = BlobData()
        data.keep_process_share(rank, 2)
        shares.append(data)
    assert [len(d.x_train) for d in shares] == [375, 375] and [len(d.x_val) for d in shares] == [125, 125]
    whole = BlobData()
    assert (shares[0].x_train == whole.x_train[:375]).all() and (shares[1].x_train == whole.x_train[375:]).all()
    with pytest.warns(UserWarning, match="the last 2 are left out"):
        data = BlobData()
        data.keep_process_share(3, 4)
    assert (len(data.x_train), len(data.x_val)) == (187, 62)


def test_two_ddp_processes_end_where_one_process_does(tmp_path):
    """750 points over 2 processes: DDP's mean of two 375-point gradients is the full-batch gradient,
    at every one of the epochs that a Lightning step trains."""
    options = ["--model", "sequential", "--epochs", "1000", "--accelerator", "cpu", "--enable_progress_bar", "false"]
    one = train(tmp_path / "one", *options)["sequential"]
    two_root = tmp_path / "two"
    ddp = ["--devices", "2", "--strategy", "ddp", "--default_root_dir", str(two_root)]
    result = run_script("train.py", *options, *ddp)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("sequential") == 1  # the table is printed by rank 0 only
    assert [p.name for p in (two_root / "sequential").iterdir()] == ["version_0"]
    two = json.loads((two_root / "sequential" / "version_0" / "summary.json").read_text())
    assert two["epochs"] == one["epochs"] == 1000
    for key in ("initial_loss", "final_loss", "train_acc", "val_acc"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    assert one["final_loss"] < one["initial_loss"] - 0.2  # it trained


def test_plain_tensor_networks_are_refused_on_several_processes(tmp_path, capsys):
    status = main(["--model", "scratch", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
                   "--default_root_dir", str(tmp_path)])  # fmt: skip
    assert status == 2
    assert "DistributedDataParallel" in capsys.readouterr().err
