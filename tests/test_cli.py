"""The command line as a user meets it: help, configs, errors, devices, and networks of one's own."""

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import yaml

from mlnet_lightning.cli import main
from mlnet_lightning.runs import validation_every
from tests.conftest import ONE_THREAD_ENV, run_script, train


def test_help_fits_on_two_screens_the_projects_options_first_then_every_trainer_option():
    result = run_script("train.py", "--help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) <= 120
    for word in ("scratch", "functional", "parameter", "linear", "sequential", "--lr", "--mlp.hidden", "--data "):
        assert word in result.stdout
    trainer = next(i for i, line in enumerate(lines) if line.startswith("Lightning's Trainer options"))
    named = " ".join(lines[trainer:])
    assert "--lr" not in named and "--seeds" not in named  # the project's options came first
    assert all(f"--{name}" in named for name in inspect.signature(L.Trainer).parameters)
    assert "--max_epochs (10000, the tutorial's)" in named  # a default of the project's, stated once
    for internal in ("HandUpdate", "RunSummary", "StopOnInterrupt", "RunCheckpoint", "EpochProgressBar"):
        assert internal not in result.stdout
    full = run_script("train.py", "--help", "trainer")
    assert full.returncode == 0 and len(full.stdout.splitlines()) > 300
    assert "--max_epochs MAX_EPOCHS" in full.stdout and "Stop training once this number of epochs" in full.stdout


def test_gpu_without_a_gpu_is_one_line_and_status_2():
    result = run_script("train.py", "--accelerator", "gpu")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "GPU" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_model_is_one_line_and_status_2():
    result = run_script("train.py", "--model", "resnet")
    assert result.returncode == 2 and "resnet" in result.stderr and "Traceback" not in result.stderr


def test_print_config_round_trips_through_config(tmp_path):
    printed = run_script("train.py", "--model", "linear", "--max_epochs", "120", "--lr", "0.5", "--print_config")
    assert printed.returncode == 0
    config = yaml.safe_load(printed.stdout)
    assert (config["model"], config["max_epochs"], config["lr"]) == ("linear", 120, 0.5)
    config["default_root_dir"] = str(tmp_path)
    config["enable_progress_bar"] = False
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = run_script("train.py", "--config", str(tmp_path / "run.yaml"))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "linear" / "version_0"
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 120
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (saved["model"], saved["lr"]) == ("linear", 0.5)
    assert "linear" in result.stdout.splitlines()[1]  # the summary table


def test_runs_are_numbered_versions_with_a_last_checkpoint(tmp_path):
    run = ("--model", "scratch", "--max_epochs", "50", "--check_val_every_n_epoch", "50", "--checkpoint_every", "50")
    train(tmp_path, *run)
    train(tmp_path, *run)
    assert sorted(p.name for p in (tmp_path / "scratch").iterdir()) == ["version_0", "version_1"]
    checkpoints = {p.name for p in (tmp_path / "scratch" / "version_1" / "checkpoints").iterdir()}
    assert checkpoints == {"last.ckpt", "epoch=49-best.ckpt"}


def test_a_plain_lightning_module_trains_through_the_same_command(tmp_path):
    (tmp_path / "plain_net.py").write_text(
        textwrap.dedent(
            """
            import lightning as L
            import torch
            import torch.nn.functional as F


            class PlainNet(L.LightningModule):
                def __init__(self, lr: float = 0.1, num_features: int = 2, num_classes: int = 4):
                    super().__init__()
                    self.save_hyperparameters()
                    self.layer = torch.nn.Linear(num_features, num_classes)

                def training_step(self, batch):
                    x, y = batch
                    loss = F.cross_entropy(self.layer(x), y)
                    self.log("train/loss", loss)
                    return loss

                def validation_step(self, batch):
                    x, y = batch
                    self.log("val/acc", (self.layer(x).argmax(-1) == y).float().mean())

                def configure_optimizers(self):
                    return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
            """
        )
    )
    result = run_script(
        "train.py", "--model", "plain_net.PlainNet", "--max_epochs", "30", "--check_val_every_n_epoch", "10",
        "--default_root_dir", "logs", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "logs" / "plainnet" / "version_0" / "summary.json").read_text())
    assert summary["epochs"] == 30 and summary["val_acc"] > 0.5


def test_the_default_validation_cadence_leaves_ten_validations_or_more(tmp_path):
    """By default, every 1, 10, 100, ... epochs: the largest power of ten leaving at least ten validations,
    written to config.yaml as the number it was; a run shorter than 1,000 epochs still validates."""
    for max_epochs, every in (("9", 1), ("250", 10)):
        summary = train(tmp_path / max_epochs, "--model", "linear", "--max_epochs", max_epochs, "--pictures", "false")
        run_dir = tmp_path / max_epochs / "linear" / "version_0"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["check_val_every_n_epoch"] == every
        assert summary["linear"]["val_acc"] is not None
        assert list((run_dir / "checkpoints").glob("epoch=*-best.ckpt"))


def test_a_negative_validation_cadence_is_one_line():
    result = run_script("train.py", "--model", "linear", "--check_val_every_n_epoch", "-1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--check_val_every_n_epoch" in result.stderr and "-1" in result.stderr


def test_a_trainer_option_given_as_a_class_with_arguments_is_made(tmp_path):
    """`--profiler SimpleProfiler --profiler.dirpath ...` (a class and its arguments, not a name Lightning
    knows) reaches the Trainer as the object, not as the parsed options."""
    profiler = ("--profiler", "SimpleProfiler", "--profiler.dirpath", str(tmp_path / "prof"))
    profiler += ("--profiler.filename", "p")
    summary = train(tmp_path, "--model", "linear", "--max_epochs", "20", "--pictures", "false", *profiler)
    assert summary["linear"]["epochs"] == 20
    assert "run_training_epoch" in (tmp_path / "prof" / "fit-p.txt").read_text()


def test_the_default_validation_cadence_follows_the_runs_length():
    lengths = {(10_000, -1): 1000, (9_999, -1): 100, (99, -1): 1, (100, -1): 10, (1, -1): 1, (0, -1): 1}
    lengths |= {(10_000, 500): 10, (-1, 3_000): 100, (-1, -1): 1000, (None, -1): 1000, (300, 100_000): 10}
    for (max_epochs, max_steps), every in lengths.items():
        assert validation_every(max_epochs, max_steps) == every, (max_epochs, max_steps)


def test_the_installed_commands_and_python_m_run_the_scripts(tmp_path, linear_run):
    """`mlnet-train` (pip's console script) and `python -m mlnet_lightning` are train.py; the others as theirs."""
    commands = Path(sys.executable).parent
    options = ["--model", "linear", "--max_epochs", "20", "--enable_progress_bar", "false"]
    for command, root in [
        ([str(commands / "mlnet-train")], "installed"),
        ([sys.executable, "-m", "mlnet_lightning"], "m"),
    ]:
        done = subprocess.run([*command, *options, "--default_root_dir", str(tmp_path / root)], capture_output=True,
                              text=True, cwd=tmp_path, env=ONE_THREAD_ENV, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[1].startswith("linear ")
        assert (tmp_path / root / "linear" / "version_0" / "summary.json").is_file()
    ckpt = str(linear_run / "checkpoints" / "last.ckpt")
    evaluated = subprocess.run([str(commands / "mlnet-evaluate"), "--ckpt", ckpt], capture_output=True, text=True,
                               cwd=tmp_path)  # fmt: skip
    assert evaluated.returncode == 0 and "accuracy" in evaluated.stdout, evaluated.stderr
    refused = subprocess.run([str(commands / "mlnet-train"), "--no_such_option", "5"], capture_output=True, text=True,
                             cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "train.py: error:" in refused.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--max-epochs", "5"], "unrecognized option --max-epochs; did you mean --max_epochs?"),
        (["--trainer.max_epohcs", "5"], "unrecognized option --trainer.max_epohcs; did you mean --trainer.max_epochs"),
        (["--modle", "linear"], "unrecognized option --modle; did you mean --model?"),
        (["--model", "lineer"], "unknown model 'lineer': did you mean 'linear'?"),
        (["--callbacks", "EarlyStop"], "--callbacks: unknown class 'EarlyStop'; did you mean EarlyStopping?"),
        (["--data", "BlobDat"], "--data: unknown class 'BlobDat'; did you mean BlobData?"),
        (["--data", "MoonsData", "--data.nois", "0.1"], "MoonsData takes no such option; did you mean --data.noise?"),
        (["--model", "mlp", "--mlp.hidden", "16,16"], "16,16 is not a list; write it in brackets: --mlp.hidden [16,"),
        (["--model.init_args.width", "8"], "--model.width: a network's own options need one network (--model NAME)"),
        (["--model", "linear", "--model.width", "8"], "--model.width: linear takes no such option (it takes none)"),
        (["--model", "mlp", "--model.hidden", "[8]"], "--model.hidden: mlp takes its options as --mlp.hidden"),
        (["validate"], "validate needs a checkpoint: --ckpt_path PATH (or last"),
    ],
)
def test_a_misspelling_gets_one_line_with_the_right_spelling(tmp_path, capsys, args, line):
    assert main([*args, "--default_root_dir", str(tmp_path), "--max_epochs", "5"]) == 2  # a subcommand comes first
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: ") and err.count("\n") == 1 and line in err, err
    assert list(tmp_path.iterdir()) == []


def test_lightning_clis_fit_subcommand_trains(tmp_path):
    options = ["--model", "linear", "--max_epochs", "5", "--enable_progress_bar", "false"]
    assert main(["fit", *options, "--default_root_dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "linear" / "version_0" / "summary.json").read_text())["epochs"] == 5
