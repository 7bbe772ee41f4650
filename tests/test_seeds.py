"""Stacked copies (--seeds, --lrs): each copy follows its single run; the spread is reported and logged."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlnet_lightning.cli import main
from mlnet_lightning.models import TUTORIAL_MODELS, TutorialModule
from mlnet_lightning.seeds import StackedCopies, distribution
from tests.conftest import train
from tests.test_tutorial import final_numbers, fit_lightning, fit_module, read_scalars

FINAL_NUMBERS = ("initial_loss", "final_loss", "train_acc", "val_acc")


@pytest.fixture(scope="module")
def eight_seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    return root, train(root, "--model", "sequential", "--max_epochs", "1000", "--seeds", "8")["sequential"]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_copies_end_where_single_runs_with_their_seeds_end(eight_seeds, tmp_path, seed):
    copies = eight_seeds[1]["copies"]
    single = train(tmp_path, "--model", "sequential", "--max_epochs", "1000", "--seed", str(seed))["sequential"]
    assert copies["seed"][seed] == seed
    for key in FINAL_NUMBERS:
        assert copies[key][seed] == pytest.approx(single[key], abs=1e-5), key


def test_the_spread_is_summarised_and_logged(eight_seeds, capsys):
    root, summary = eight_seeds
    (spread,) = summary["distribution"]
    accuracies = summary["copies"]["val_acc"]
    assert spread["lr"] == 0.2 and spread["copies"] == 8
    acc = spread["val_acc"]
    assert acc["min"] == min(accuracies) < acc["median"] < acc["max"] == max(accuracies)
    assert acc["mean"] == pytest.approx(sum(accuracies) / 8) and acc["std"] > 0.01  # seeds matter at 1000 epochs
    assert accuracies[acc["best_seed"]] == acc["max"] and accuracies[acc["worst_seed"]] == acc["min"]
    assert summary["val_acc"] == pytest.approx(acc["mean"])  # the usual row holds the means
    run_dir = root / "sequential" / "version_0"
    scalars = read_scalars(run_dir)
    assert [step for step, _ in scalars["train/loss_mean"]] == list(range(1000))
    assert scalars["train/loss_mean"][-1][1] == pytest.approx(sum(summary["copies"]["final_loss"]) / 8, abs=1e-6)
    events = EventAccumulator(str(run_dir), size_guidance={"histograms": 0})
    events.Reload()
    histograms = events.Histograms("val/acc")
    assert [h.step for h in histograms] == list(range(99, 1000, 100))
    assert histograms[-1].histogram_value.num == 8
    assert histograms[-1].histogram_value.min == pytest.approx(acc["min"])


def test_a_learning_rate_sweep_prints_a_line_per_rate(tmp_path, capsys):
    sweep = ("--model", "linear", "--max_epochs", "300", "--lrs", "0.05,0.1,0.2,0.5")
    summary = train(tmp_path / "sweep", *sweep)["linear"]
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["linear", lr] for lr in ("0.05", "0.1", "0.2", "0.5")]
    assert [entry["lr"] for entry in summary["distribution"]] == [0.05, 0.1, 0.2, 0.5]
    single = train(tmp_path / "single", "--model", "linear", "--max_epochs", "300", "--lr", "0.5")["linear"]
    for key in FINAL_NUMBERS:
        assert summary["copies"][key][3] == pytest.approx(single[key], abs=1e-5), key
    final_losses = summary["copies"]["final_loss"]
    assert final_losses == sorted(final_losses, reverse=True)  # larger steps go further in 300 epochs


@pytest.mark.parametrize("name", ["scratch", "functional", "parameter", "linear"])
@pytest.mark.parametrize("logits", [False, True])
def test_every_tutorial_network_stacks_exactly(name, logits):
    copies = StackedCopies(TUTORIAL_MODELS[name], seeds=[0, 3], lrs=[0.2], logits=logits)
    fit_module(copies, epochs=150, val_every=50)
    _, single = fit_lightning(name, epochs=150, seed=3, logits=logits, val_every=50)
    for key, value in final_numbers(single).items():
        assert copies.latest()[key][1].item() == pytest.approx(value, abs=1e-6), key


def test_mlp_stacks_exactly(tmp_path):
    mlp = ["--model", "mlp", "--mlp.hidden", "[8, 8]", "--mlp.activation", "relu", "--max_epochs", "300"]
    stacked = train(tmp_path / "stacked", *mlp, "--seeds", "3")["mlp"]["copies"]
    single = train(tmp_path / "single", *mlp, "--seed", "2")["mlp"]
    for key in FINAL_NUMBERS:
        assert stacked[key][2] == pytest.approx(single[key], abs=1e-5), key


def test_stacked_sgd_trains_at_the_optimizers_rate(tmp_path):
    run = ("--model", "linear", "--max_epochs", "300")
    stacked = train(tmp_path / "stacked", *run, "--optimizer", "SGD", "--optimizer.lr", "0.5", "--seeds", "2")
    single = train(tmp_path / "single", *run, "--lr", "0.5", "--seed", "1")["linear"]
    copies = stacked["linear"]["copies"]
    assert copies["lr"] == [0.5, 0.5]
    for key in FINAL_NUMBERS:
        assert copies[key][1] == pytest.approx(single[key], abs=1e-5), key


def test_mini_batches_stack_exactly():
    copies = StackedCopies(TUTORIAL_MODELS["sequential"], seeds=[0, 5], lrs=[0.2])
    fit_module(copies, epochs=20, batch_size=64)
    _, single = fit_lightning("sequential", epochs=20, seed=5, batch_size=64)
    expected = final_numbers(single)  # the initial loss: epoch 0's, a mean over its updating batches
    for key, value in expected.items():
        assert copies.latest()[key][1].item() == pytest.approx(value, abs=1e-6), key


class Doubled(TutorialModule):
    """A network whose forward is more than the nn.Sequential it holds."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 4))

    def forward(self, x):
        return 2 * self.net(x)


def test_a_network_that_is_not_its_layers_is_refused():
    with pytest.raises(ValueError, match="forward is not the stack"):
        StackedCopies(Doubled, seeds=[0, 1], lrs=[0.1])


@pytest.mark.parametrize(
    "options, message",
    [
        (["--lrs", "0.1,fast"], "--lrs"),
        (["--lrs", "0.1,0.1"], "--lrs"),
        (["--seeds", "4", "--devices", "2", "--strategy", "ddp"], "one device"),
        (["--seeds", "2", "--optimizer", "Adam", "--optimizer.lr", "0.01"], "plain gradient descent"),
        (["--lrs", "0.1,0.2", "--optimizer", "SGD", "--optimizer.lr", "0.5"], "without --optimizer.lr"),
    ],
)
def test_bad_stacking_options_are_one_line_and_status_2(tmp_path, capsys, options, message):
    status = main(["--model", "linear", "--accelerator", "cpu", "--default_root_dir", str(tmp_path), *options])
    error = capsys.readouterr().err
    assert status == 2 and message in error and error.count("\n") == 1


def test_distribution_names_the_best_and_worst_seeds():
    spread = distribution([0.9, 0.8, 0.95, 0.8], seeds=[10, 11, 12, 13], higher_is_better=True)
    assert (spread["best_seed"], spread["worst_seed"], spread["min"]) == (12, 11, 0.8)  # the first of equals
    assert spread["median"] == pytest.approx(0.85)
    spread = distribution([0.3, 0.1, 0.2], seeds=[0, 1, 2], higher_is_better=False)
    assert (spread["best_seed"], spread["worst_seed"]) == (1, 0)
