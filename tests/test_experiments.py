"""The experiments of configs/: each trains, the comparison ranks them, and their claims hold."""

import json
from pathlib import Path

import pytest
import yaml

from mlnet_lightning import compare
from mlnet_lightning.baseline import fit_tutorial
from mlnet_lightning.data import BlobData
from mlnet_lightning.models import TUTORIAL_MODELS
from mlnet_lightning.reference import TUTORIAL
from tests.conftest import ROOT, run_script, train
from tests.test_tutorial import read_scalars

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_every_config_says_what_it_shows_and_the_docs_list_it():
    usage = (ROOT / "docs" / "usage.md").read_text()
    experiments = usage[usage.index("## Experiments") :]
    assert len(CONFIGS) >= 17
    for path in CONFIGS:
        first_line = path.read_text().splitlines()[0]
        assert first_line.startswith("# ") and len(first_line) > 30, path.name
        assert f"configs/{path.name}" in experiments, path.name


def test_compare_trains_every_config_into_one_folder_and_ranks_them(tmp_path, capsys):
    args = [str(path) for path in CONFIGS]
    options = ["--max_epochs", "50", "--check_val_every_n_epoch", "50", "--default_root_dir", str(tmp_path)]
    assert compare.main([*args, *options, "--enable_progress_bar", "false", "--enable_checkpointing", "false"]) == 0
    for path in CONFIGS:
        run_dir = tmp_path / "compare" / path.stem / "version_0"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["epochs"] == 50 and summary["final_loss"] < summary["initial_loss"], path.name
        assert [step for step, _ in read_scalars(run_dir)["train/loss"]] == list(range(50)), path.name
    header, *rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert header[:3] == ["run", "data", "model"]
    data_sets = {path.stem: data_set(path) for path in CONFIGS}
    assert {row[0]: row[1] for row in rows} == data_sets
    assert len(set(data_sets.values())) > 1  # else nothing to group
    val_acc = header.index("val_acc")
    ranked = [(row[1], -float(row[val_acc])) for row in rows]
    assert ranked == sorted(ranked)  # by data set, the best val acc first in each


def data_set(config: Path) -> str:
    """The class name of a config's data (BlobData, the default, where it names none)."""
    data = yaml.safe_load(config.read_text()).get("data") or {}
    return data.get("class_path", "BlobData").rpartition(".")[2]


def test_a_diverging_run_fails_the_comparison_in_one_line(tmp_path):
    result = run_script("compare.py", "--model", "scratch", "--lr", "100", "--max_epochs", "50",
                        "--enable_progress_bar", "false", "--default_root_dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (  # one line: no warning from torchmetrics about the NaN before it
        "compare.py: error: training diverged: scratch: the loss became nan at epoch 11 "
        "(the learning rate may be too large); last good checkpoint: none\n"
    )
    assert result.stdout == ""


def test_compare_runs_the_tutorials_networks(tmp_path, capsys):
    options = ["--max_epochs", "5", "--default_root_dir", str(tmp_path), "--enable_progress_bar", "false"]
    assert compare.main(["--model", "all", *options]) == 0
    assert {p.name for p in (tmp_path / "compare").iterdir()} == set(TUTORIAL_MODELS)
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_a_bad_config_stops_the_comparison_before_any_run(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: mlp\nmlp:\n  activation: swish\n")
    assert compare.main([str(CONFIGS[0]), str(bad), "--default_root_dir", str(tmp_path / "logs")]) == 2
    assert capsys.readouterr().err.startswith("compare.py: error: --mlp.activation")
    assert not (tmp_path / "logs").exists()


def test_mlp_config_is_the_scratch_network_step_for_step(tmp_path):
    data = BlobData()
    plain = fit_tutorial("scratch", data.x_train, data.y_train, data.x_val, data.y_val, epochs=300)
    summary = train(tmp_path, "--config", str(ROOT / "configs" / "mlp.yaml"), "--max_epochs", "300")["mlp"]
    assert summary["initial_loss"] == pytest.approx(TUTORIAL["scratch"]["initial_loss"], abs=1e-6)
    assert summary["final_loss"] == pytest.approx(plain.losses[-1], abs=1e-6)
    assert summary["val_acc"] == pytest.approx(plain.val_acc, abs=1e-6)


@pytest.mark.parametrize("config, classes, at_least", [("moons_relu_adam", 2, 0.95), ("relu_adam", 4, 0.94)])
def test_two_relu_layers_with_adam_reach_the_target(tmp_path, config, classes, at_least):
    """[16, 16] ReLU with Adam: val acc 0.95 on moons with noise 0.2 (1,000 points), 0.94 on the blobs;
    the network's outputs follow the data's classes."""
    summary = train(tmp_path, "--config", str(ROOT / "configs" / f"{config}.yaml"))["mlp"]
    hparams = yaml.safe_load((tmp_path / "mlp" / "version_0" / "hparams.yaml").read_text())
    assert (hparams["num_classes"], hparams["hidden"], hparams["activation"]) == (classes, [16, 16], "relu")
    assert summary["epochs"] == 1000
    assert round(summary["val_acc"], 4) >= at_least  # rounded: float32 reads 235/250 as 0.93999999


def test_momentum_reaches_the_plain_sgd_loss_in_fewer_epochs(tmp_path):
    """The tutorial's network (sequential) for 1,000 epochs: plain SGD at lr 0.2, then with momentum 0.9.
    (For the tutorial's 10,000 epochs: 952 epochs with momentum; see configs/momentum.yaml.)"""
    sgd = ["--model", "sequential", "--max_epochs", "1000", "--optimizer", "SGD", "--optimizer.lr", "0.2"]
    plain = train(tmp_path / "plain", *sgd)["sequential"]
    train(tmp_path / "momentum", *sgd, "--optimizer.momentum", "0.9")
    curve = [loss for _, loss in read_scalars(tmp_path / "momentum" / "sequential" / "version_0")["train/loss"]]
    epochs_to_reach = next((epoch + 1 for epoch, loss in enumerate(curve) if loss <= plain["final_loss"]), None)
    assert epochs_to_reach is not None and epochs_to_reach < plain["epochs"] / 5  # measured: 121 epochs
