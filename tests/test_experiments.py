"""The experiments of configs/: each trains, the comparison ranks them, and their claims hold."""

import json

import pytest
import yaml

from mlnet_lightning import compare
from mlnet_lightning.baseline import fit_tutorial
from mlnet_lightning.data import BlobData
from mlnet_lightning.models import TUTORIAL_MODELS
from mlnet_lightning.reference import TUTORIAL
from tests.conftest import ROOT, train
from tests.test_tutorial import read_scalars

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_every_config_says_what_it_shows_and_the_readme_lists_it():
    readme = (ROOT / "README.md").read_text()
    experiments = readme[readme.index("## Experiments") :]
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
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["run", "model"]
    assert sorted(row.split()[0] for row in rows) == sorted(path.stem for path in CONFIGS)
    val_accs = [float(row.split()[header.split().index("val_acc")]) for row in rows]
    assert val_accs == sorted(val_accs, reverse=True)


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
