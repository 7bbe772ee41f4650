"""The choices beyond the tutorial: data sets, the mlp network, optimizers and schedules, on the command line."""

import pytest
import torch
import torch.nn.functional as F
import yaml

from mlnet_lightning.baseline import fit_plain, tutorial_network
from mlnet_lightning.cli import main
from mlnet_lightning.data import BlobData, CirclesData, MoonsData
from mlnet_lightning.models import MLP
from tests.conftest import train
from tests.test_tutorial import read_scalars


@pytest.mark.parametrize("data_class", [MoonsData, CirclesData])
def test_moons_and_circles_share_the_split_seed_and_noise(data_class):
    data = data_class(noise=0.2)
    assert data.x_train.shape == (750, 2) and data.x_val.shape == (250, 2)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert torch.bincount(data.y_train).tolist() == [375, 375] and (data.num_features, data.num_classes) == (2, 2)
    assert torch.equal(data.x_train, data_class(noise=0.2).x_train)  # the seed fixes points and split
    assert not torch.equal(data.x_train, data_class(noise=0.2, seed=1).x_train)
    clean = data_class(noise=0.0)
    assert torch.equal(clean.y_train, data.y_train)  # the same points, moved by the noise
    assert 0.1 < (data.x_train - clean.x_train).std() < 0.3
    with pytest.raises(ValueError, match="noise"):
        data_class(noise=-0.1)


def test_blobs_take_their_spread_and_size():
    data = BlobData(n_samples=400, cluster_std=0.5)
    assert len(data.x_train) + len(data.x_val) == 400
    assert not torch.equal(data.x_train, BlobData(n_samples=400).x_train)


def test_mlp_defaults_are_the_tutorials_network_with_logits():
    model = MLP(seed=0, logits=False)
    assert [type(layer).__name__ for layer in model.net] == ["Linear", "Sigmoid", "Linear"]
    assert model.hparams.logits is True  # an mlp always returns logits
    scratch, _ = tutorial_network("scratch", logits=True)  # randn / sqrt(2) after torch.manual_seed(0)
    x = torch.randn(8, 2)
    assert torch.allclose(model(x), scratch(x))
    assert [type(layer).__name__ for layer in MLP(hidden=[]).net] == ["Linear"]  # a linear classifier


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "gelu"])
@pytest.mark.parametrize(
    "init", ["tutorial", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal"]
)
def test_mlp_layers_activations_and_initialisations(activation, init):
    model = MLP(hidden=[16, 8], activation=activation, init=init, num_classes=3)
    linears = model.net[::2]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(2, 16), (16, 8), (8, 3)]
    assert all(type(layer).__name__.lower() == activation for layer in model.net[1::2])
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in linears)
    weight = linears[1].weight  # 8 x 16
    if init == "orthogonal":
        assert torch.allclose(weight @ weight.T, torch.eye(8), atol=1e-5)
    else:  # the scheme's spread: 1/fan_in for the tutorial's, 2/(fan_in+fan_out) Glorot, 2/fan_in He
        expected = {"tutorial": 1 / 16, "xavier": 2 / 24, "kaiming": 2 / 16}[init.split("_")[0]]
        assert weight.var().item() == pytest.approx(expected, rel=0.35)
    assert torch.equal(weight, MLP(hidden=[16, 8], activation=activation, init=init, num_classes=3).net[2].weight)


def test_chosen_optimizer_is_the_one_that_trains(tmp_path):
    """--optimizer Adam follows a plain loop with torch.optim.Adam, step for step."""
    data = BlobData()
    net, _ = tutorial_network("linear")
    adam = torch.optim.Adam(net.parameters(), lr=0.01)
    plain = fit_plain(net, F.cross_entropy, adam, data.x_train, data.y_train, data.x_val, data.y_val, 100)
    summary = train(
        tmp_path, "--model", "linear", "--max_epochs", "100", "--optimizer", "Adam", "--optimizer.lr", "0.01"
    )
    assert summary["linear"]["final_loss"] == pytest.approx(plain.losses[-1], abs=1e-6)
    assert summary["linear"]["val_acc"] == pytest.approx(plain.val_acc, abs=1e-6)


def test_schedule_steps_once_per_data_epoch(tmp_path):
    """StepLR every 10 epochs, while the fast path trains 7 at a time between validations: the rate
    follows the epochs."""
    data = BlobData()
    net, _ = tutorial_network("sequential", logits=True)
    sgd = torch.optim.SGD(net.parameters(), lr=0.2)
    schedule = torch.optim.lr_scheduler.StepLR(sgd, step_size=10, gamma=0.5)
    losses = []
    for _ in range(50):
        loss = F.cross_entropy(net(data.x_train), data.y_train)
        loss.backward()
        sgd.step()
        sgd.zero_grad()
        schedule.step()
        losses.append(loss.item())
    args = ["--model", "sequential", "--logits", "true", "--max_epochs", "50", "--check_val_every_n_epoch", "7"]
    schedule_args = ["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "10", "--lr_scheduler.gamma", "0.5"]
    summary = train(tmp_path, *args, *schedule_args)["sequential"]
    assert summary["final_loss"] == pytest.approx(losses[-1], abs=1e-6)
    rates = read_scalars(tmp_path / "sequential" / "version_0")["train/lr"]
    assert rates == [(epoch, pytest.approx(0.2 * 0.5 ** (epoch // 10))) for epoch in range(50)]


def test_help_and_print_config_show_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for option in ("--data ", "--mlp.hidden", "--mlp.activation", "--mlp.init", "--optimizer ", "--lr_scheduler "):
        assert option in help_text
    for choice in ("MoonsData", "CirclesData", "gelu", "orthogonal", "kaiming_normal"):
        assert choice in help_text
    args = ["--model", "mlp", "--mlp.hidden", "[16,16]", "--mlp.activation", "relu", "--mlp.init", "orthogonal"]
    args += ["--data", "MoonsData", "--data.noise", "0.2", "--optimizer", "SGD", "--optimizer.lr", "0.1"]
    args += ["--optimizer.momentum", "0.9", "--optimizer.nesterov", "true", "--lr_scheduler", "StepLR"]
    with pytest.raises(SystemExit):
        main([*args, "--lr_scheduler.step_size", "1000", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["mlp"] == {"hidden": [16, 16], "activation": "relu", "init": "orthogonal"}
    assert config["data"]["class_path"] == "mlnet_lightning.data.MoonsData" and config["data"]["init_args"]["noise"]
    optimizer = config["optimizer"]
    assert optimizer["class_path"] == "torch.optim.SGD"
    assert (optimizer["init_args"]["momentum"], optimizer["init_args"]["nesterov"]) == (0.9, True)
    assert config["lr_scheduler"]["init_args"]["step_size"] == 1000


@pytest.mark.parametrize(
    "args, named",
    [
        (["--model", "mlp", "--mlp.activation", "swish"], "--mlp.activation"),
        (["--model", "mlp", "--mlp.init", "uniform"], "--mlp.init"),
        (["--model", "mlp", "--mlp.hidden", "[16,0]"], "hidden sizes must be positive"),
        (["--optimizer", "Adamm"], "unknown class 'Adamm'"),
        (["--lr_scheduler", "Steplr"], "unknown class 'Steplr'"),
        (["--data", "Moons"], "unknown class 'Moons'"),
        (["--data", "MoonsData", "--data.noise", "-0.1"], "noise must be a non-negative number"),
        (["--data.noise", "0.2"], "--data.noise: BlobData takes no such option"),
        (["--lr_scheduler", "StepLR"], "required: step_size"),
        (["--model", "scratch", "--optimizer", "Adam"], "scratch updates its tensors by hand"),
        (["--model", "linear", "--mlp.hidden", "[16]"], "--mlp options apply to --model mlp only"),
        (["--model", "no_such_file.py:Net"], "No such file"),
    ],
)
def test_wrong_choices_end_with_one_line_and_status_2(tmp_path, capsys, args, named):
    assert main(["--default_root_dir", str(tmp_path), "--enable_progress_bar", "false", *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("train.py: error: ") and error.count("\n") == 1, error
    assert named in error
    assert not list(tmp_path.iterdir())  # nothing that looks like a run
