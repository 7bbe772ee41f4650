"""A plain nn.Module of one's own, written as the tutorial writes its networks, trained through the project's
standard LightningModule (Wrapped): from the command line and from Python, checked, checkpointed, evaluated."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from mlnet_lightning import cli
from mlnet_lightning.baseline import fit_plain
from mlnet_lightning.data import BlobData
from mlnet_lightning.fastpath import callback, fast_forward
from mlnet_lightning.imports import import_file
from mlnet_lightning.models import Wrapped
from tests.conftest import run_script
from tests.test_lightning_native import assert_same

# The tutorial's nn.Linear section as it writes it (sizes and seed in the class), and networks with options.
NETWORKS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class FirstNetwork_v1(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin1 = nn.Linear(2, 2)
            self.lin2 = nn.Linear(2, 4)

        def forward(self, X):
            a1 = self.lin1(X)
            h1 = a1.sigmoid()
            a2 = self.lin2(h1)
            h2 = a2.exp() / a2.exp().sum(-1).unsqueeze(-1)
            return h2


    class Hidden(nn.Module):
        fast_path = True  # every epoch computes the same: the fast path may train it in bulk

        def __init__(self, num_features: int, num_classes: int, width: int = 8):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(num_features, width), nn.Tanh(), nn.Linear(width, num_classes))

        def forward(self, x):
            return self.net(x)


    class NeedsDepth(nn.Module):
        def __init__(self, depth: int):
            super().__init__()
            self.lin = nn.Linear(2, 4)

        def forward(self, x):
            return self.lin(x)


    class ThreeOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 3)

        def forward(self, x):
            return self.lin(x)


    class NotANetwork:
        pass
    """
)


@pytest.fixture
def networks_file(tmp_path: Path) -> Path:
    path = tmp_path / "tutorial_nets.py"
    path.write_text(NETWORKS)
    return path


def plain_loop(network: torch.nn.Module, epochs: int):
    """The tutorial's fit: SGD at 0.2, F.cross_entropy on the network's softmax output, full batch."""
    data = BlobData()
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    x_val, y_val = next(iter(data.val_dataloader()))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.2)
    return fit_plain(network, F.cross_entropy, optimizer, x, y, x_val, y_val, epochs)


def test_the_tutorials_nn_module_trains_from_the_command_line(tmp_path, networks_file):
    """Defaults on, in a process of its own; then evaluate.py and predict.py from another folder."""
    done = run_script("train.py", "--model", "tutorial_nets.py:FirstNetwork_v1", "--max_epochs", "1000", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "FirstNetwork_v1: 100%" in done.stderr  # the progress bar names the network
    run = tmp_path / "lightning_logs" / "firstnetwork_v1" / "version_0"
    summary = json.loads((run / "summary.json").read_text())
    plain = plain_loop(import_file(networks_file).FirstNetwork_v1(), 1000)
    assert summary["epochs"] == 1000
    assert summary["final_loss"] == pytest.approx(plain.losses[-1], abs=1e-6)
    assert summary["val_acc"] == pytest.approx(plain.val_acc, abs=1e-6)
    assert all((run / picture).is_file() for picture in ("curves.png", "decision_boundary.png"))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    evaluated = run_script("evaluate.py", "--ckpt", checkpoint, cwd=elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"accuracy    {summary['val_acc']:.4f}" in evaluated.stdout
    (elsewhere / "points.csv").write_text("0.5,0.2\n1,1\n")
    predicted = run_script("predict.py", "--ckpt", checkpoint, "--input", "points.csv", "--output", "-", cwd=elsewhere)
    assert predicted.returncode == 0, predicted.stderr
    header, *rows = [line.split(",") for line in predicted.stdout.splitlines()]
    assert header == ["x1", "x2", "class", "p0", "p1", "p2", "p3"]
    assert len(rows) == 2 and all(sum(map(float, row[3:])) == pytest.approx(1, abs=1e-6) for row in rows)


def test_a_networks_own_options_and_the_fast_path_it_asks_for(tmp_path, networks_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bulks = []
    monkeypatch.setattr(callback, "fast_forward", lambda module, batch: bulks.append(fast_forward(module, batch)))
    args = ["--model", "tutorial_nets.py:Hidden", "--model.width", "3", "--data", "MoonsData", "--max_epochs", "2000"]
    assert cli.main([*args, "--default_root_dir", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "hidden" / "version_0"
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["state_dict"]["network.net.0.weight"].shape == (3, 2)  # width 3, two inputs
    assert saved["state_dict"]["network.net.2.weight"].shape == (2, 3)  # moons: two classes
    assert saved["hyper_parameters"]["network_args"] == {"width": 3}
    assert sum(bulks) > 1900  # Hidden says fast_path = True
    assert json.loads((run / "summary.json").read_text())["val_acc"] > 0.95


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("NeedsDepth", "NeedsDepth.__init__() missing 1 required positional argument: 'depth'"),
        ("ThreeOutputs", "ThreeOutputs: its forward returns [2, 3] for 2 points, not [2, 4] (4 classes in the data)"),
        ("NotANetwork", "model 'tutorial_nets.py:NotANetwork' is not an nn.Module or a LightningModule"),
    ],
)
def test_a_mistake_in_a_plain_network_is_one_line(tmp_path, networks_file, network, message):
    done = run_script("train.py", "--model", f"tutorial_nets.py:{network}", "--max_epochs", "5", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"train.py: error: {message}"]
    assert not (tmp_path / "lightning_logs").exists()


def test_from_python_a_plain_network_is_wrapped(tmp_path, networks_file):
    nets = import_file(networks_file)
    model = Wrapped(nets.FirstNetwork_v1())
    trainer = L.Trainer(accelerator="cpu", max_epochs=300, default_root_dir=tmp_path)
    trainer.fit(model, BlobData())
    plain = plain_loop(nets.FirstNetwork_v1(), 300)
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(plain.losses[-1], abs=1e-6)
    assert model.fast_path is False  # FirstNetwork_v1 does not say fast_path = True

    [checkpoint] = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    loaded = Wrapped.load_from_checkpoint(checkpoint)
    assert type(loaded.network).__name__ == "FirstNetwork_v1"
    assert_same(loaded.state_dict(), model.state_dict(), "state_dict")
    validated = L.Trainer(accelerator="cpu", logger=False).validate(loaded, BlobData())
    assert validated[0]["val/acc"] == pytest.approx(trainer.validate(model, BlobData())[0]["val/acc"])
