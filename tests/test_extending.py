"""docs/extending.md as a user follows it, and networks of one's own from files outside the package."""

import inspect
import json
import pydoc
import re
import shlex
import subprocess
import sys

import lightning as L
import pytest
import torch
import yaml

from mlnet_lightning.cli import main
from mlnet_lightning.data import MoonsData
from mlnet_lightning.models import MODELS, Sequential
from tests.conftest import ROOT, train
from tests.test_tutorial import read_scalars

DOC = (ROOT / "docs" / "extending.md").read_text()


def fenced_blocks(language: str, section: str) -> list[str]:
    text = DOC.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def example(section: str) -> tuple[str, str, dict[str, str]]:
    """A section's code, its command, and the row of the table the doc says it prints."""
    (code,) = fenced_blocks("python", section)
    (command,) = fenced_blocks("bash", section)
    (output,) = fenced_blocks("text", section)
    return code, command.strip(), table_row(output)


def table_row(table: str) -> dict[str, str]:
    """The summary table's one row by column, cut where the header's names start (a cell may be empty)."""
    header, row = table.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    cells = [row[start:end].strip() for start, end in zip(starts, [*starts[1:], None])]
    return dict(zip(header.split(), cells))


EXAMPLES = [
    ("A worked example", "my_net.py"),
    ("A plain nn.Module", "first_network.py"),
    ("A LightningModule of your own", "two_layers.py"),
]


@pytest.mark.parametrize(("section", "file"), EXAMPLES)
def test_the_examples_run_as_written_and_print_what_the_doc_says(tmp_path, section, file):
    code, command, printed = example(section)
    (tmp_path / file).write_text(code)  # "save this as my_net.py in the project's folder"
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")  # ... a folder of the user's, not the package's
    program, *args = shlex.split(command)
    assert program == "python"
    result = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    measured = table_row(result.stdout)
    for column in ("model", "initial_loss", "final_loss", "train_acc", "val_acc", "device"):
        assert measured[column] == printed[column], column
    run_dir = tmp_path / "lightning_logs" / printed["model"] / "version_0"
    # 500 epochs end before the first last.ckpt (every 1,000): the best by val/acc is the run's checkpoint
    assert (run_dir / "summary.json").exists() and list((run_dir / "checkpoints").glob("epoch=*-best.ckpt"))


def test_a_subclass_in_a_module_of_ones_own_gets_the_projects_training(tmp_path, monkeypatch):
    """The module form (my_net.SquaresNet, importable from the working directory), in-process: a point
    every epoch and a validation every 10 (by default the largest power of ten that leaves ten validations;
    the fast path trains the epochs between), and the chosen optimizer."""
    code, _, _ = example("A worked example")
    (tmp_path / "my_net.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--model", "my_net.SquaresNet", "--data", "CirclesData", "--max_epochs", "300"]
    summary = train(tmp_path / "logs", *args, "--optimizer", "Adam", "--optimizer.lr", "0.05")["squaresnet"]
    assert summary["epochs"] == 300 and summary["initial_loss"] > summary["final_loss"]
    assert summary["val_acc"] > 0.95  # noiseless circles: a line on the squares separates them
    run_dir = tmp_path / "logs" / "squaresnet" / "version_0"
    scalars = read_scalars(run_dir)
    assert [step for step, _ in scalars["train/loss"]] == list(range(300))
    assert [step for step, _ in scalars["val/acc"]] == list(range(9, 300, 10))
    config = (run_dir / "config.yaml").read_text()
    assert "model: my_net.SquaresNet" in config and "torch.optim.Adam" in config
    monkeypatch.delitem(sys.modules, "my_net")


@pytest.mark.parametrize("name", ["elsewhere.py:Missing", "not_python.txt:Net"])
def test_a_wrong_file_or_class_is_one_line(tmp_path, capsys, name):
    (tmp_path / "elsewhere.py").write_text("")
    assert main(["--model", str(tmp_path / name), "--default_root_dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and name.split(":")[0] in error


def test_an_optimizer_for_a_module_that_takes_none_is_one_line(tmp_path, capsys):
    (tmp_path / "fixed.py").write_text(
        "import lightning as L\n\n\nclass Fixed(L.LightningModule):\n    def __init__(self, lr: float = 0.1):\n"
        "        super().__init__()\n"
    )
    args = ["--model", f"{tmp_path / 'fixed.py'}:Fixed", "--optimizer", "Adam", "--default_root_dir", str(tmp_path)]
    assert main(args) == 2
    assert "--optimizer: Fixed's constructor takes no optimizer argument" in capsys.readouterr().err


def test_the_networks_constructors_show_the_options_they_pass_on():
    """inspect.signature and help() show what `**kwargs` passes to TutorialModule, a subclass's own first."""
    for network in MODELS.values():
        assert {"lr", "logits", "seed", "optimizer"} <= set(inspect.signature(network).parameters)

    class Wider(Sequential):
        def __init__(self, width: int = 32, **kwargs) -> None:
            super().__init__(**kwargs)

    assert list(inspect.signature(Wider).parameters)[:3] == ["width", "lr", "logits"]
    assert "logits: 'bool' = False" in pydoc.render_doc(Sequential)


def test_from_python_data_of_other_sizes_is_refused_before_any_step():
    model = Sequential()  # made for the blobs: 2 inputs, 4 classes
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer = L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="Sequential was made for 2 inputs and 4 classes, MoonsData has 2 and 2"):
        trainer.fit(model, datamodule=MoonsData())
    assert trainer.global_step == 0
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


MISTAKES = """
import torch
from torch import nn
from mlnet_lightning.models import TutorialModule


class NeedsWidth(TutorialModule):
    def __init__(self, width: int, **kwargs):
        super().__init__(**kwargs)
        self.net = nn.Linear(2, width)


class NoForward(TutorialModule):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = nn.Linear(2, 4)


class WrongInputs(TutorialModule):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = nn.Linear(3, 4)

    def forward(self, x):
        return self.net(x)


class WrongClasses(WrongInputs):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = nn.Linear(2, 3)
"""


@pytest.mark.parametrize(
    ("network", "line"),
    [
        ("NeedsWidth", "NeedsWidth.__init__() missing 1 required positional argument: 'width'"),
        ("NoForward", "NoForward has no forward: write forward(self, x), returning a score for each class"),
        ("WrongInputs", "WrongInputs: its forward fails on points of 2 inputs: mat1 and mat2 shapes cannot be"),
        ("WrongClasses", "WrongClasses: its forward returns [2, 3] for 2 points, not [2, 4] (4 classes in the data)"),
        ("Broken", "cannot import model '{file}:Broken': SyntaxError: invalid syntax"),
    ],
)
def test_a_mistake_in_ones_own_network_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, network, line):
    file = tmp_path / f"nets_{network.lower()}.py"
    file.write_text(MISTAKES if network != "Broken" else "class Broken(:\n    pass\n")
    logs = tmp_path / "logs"
    assert main(["--model", f"{file}:{network}", "--max_epochs", "5", "--default_root_dir", str(logs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.py: error: "), err
    assert line.format(file=file) in err
    assert not logs.exists()


WITH_OPTIONS = """
import torch
from torch import nn
from mlnet_lightning.models import TutorialModule


class WithOpt(TutorialModule):
    def __init__(self, width: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        torch.manual_seed(self.hparams.seed)
        self.net = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, self.hparams.num_classes))

    def forward(self, x):
        return self.net(x)
"""


def test_a_networks_own_options_reach_its_constructor_in_every_spelling_and_rerun_from_its_config(tmp_path, capsys):
    file = tmp_path / "with_options.py"
    file.write_text(WITH_OPTIONS)
    run = ["--max_epochs", "50", "--enable_progress_bar", "false"]
    spellings = {
        "short": ["--model", f"{file}:WithOpt", "--model.width", "8"],
        "lightning": [f"--model.class_path={file}:WithOpt", "--model.init_args.width", "8"],
    }
    for root, options in spellings.items():
        assert main([*options, *run, "--default_root_dir", str(tmp_path / root)]) == 0
        checkpoint = torch.load(tmp_path / root / "withopt" / "version_0" / "checkpoints" / "last.ckpt")
        assert checkpoint["hyper_parameters"]["width"] == 8
        assert checkpoint["state_dict"]["net.0.weight"].shape == (8, 2)  # the constructor made 8 units
    config = tmp_path / "short" / "withopt" / "version_0" / "config.yaml"
    assert main(["--config", str(config), "--default_root_dir", str(tmp_path / "rerun")]) == 0
    summaries = [json.loads((tmp_path / root / "withopt" / "version_0" / "summary.json").read_text())
                 for root in ("short", "lightning", "rerun")]  # fmt: skip
    assert len({summary["final_loss"] for summary in summaries}) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*spellings["short"], "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model_args"] == {"width": "8"}
    assert main(["--model", f"{file}:WithOpt", "--model.widht", "8", *run, "--default_root_dir", str(tmp_path)]) == 2
    assert "--model.widht: withopt takes no such option; did you mean --model.width?" in capsys.readouterr().err
