"""LightningCLI's shape of the command line: `--trainer.X`, and the validate, test and predict subcommands."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from mlnet_lightning.checkpoints import load_run
from mlnet_lightning.cli import main
from mlnet_lightning.inference import evaluate_main, predict_main
from tests.conftest import run_script, train

INTERNAL = ("RunSummary", "StopOnInterrupt", "RunCheckpoint", "EpochProgressBar", "LatestCheckpoint")
INTERNAL += ("BestCheckpoint", "RunFileCheckpoint", "Pictures", "RunConfig", "RunLogger", "SeriesRecorder")
INTERNAL += ("HandUpdate", "AtomicCheckpointIO")


def summary(root: Path, name: str = "linear") -> dict:
    [path] = (root / name).glob("version_*/summary.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A short linear run's last.ckpt, its folder under lightning_logs (where `--ckpt_path last` looks)."""
    root = tmp_path_factory.mktemp("shape")
    train(root / "lightning_logs", "--model", "linear", "--max_epochs", "100", "--pictures", "false")
    return next(root.glob("lightning_logs/linear/version_0/checkpoints/last.ckpt"))


def test_fit_with_the_trainers_options_spelt_as_lightning_clis(tmp_path):
    args = ["fit", "--trainer.max_epochs", "7", "--model", "linear", f"--trainer.default_root_dir={tmp_path}"]
    assert main([*args, "--trainer.enable_progress_bar=false", "--pictures", "false"]) == 0
    assert summary(tmp_path)["epochs"] == 7
    config = yaml.safe_load(next(tmp_path.glob("linear/version_0/config.yaml")).read_text())
    assert (config["max_epochs"], config["enable_progress_bar"]) == (7, False)


def test_trainer_callbacks_and_logger_reach_the_trainer(tmp_path):
    stop = ["--trainer.callbacks", "EarlyStopping", "--trainer.callbacks.monitor", "val/loss"]
    stop += ["--trainer.callbacks.patience", "1", "--trainer.callbacks.min_delta=0.05"]
    args = ["--model", "linear", "--trainer.max_epochs", "1000", "--trainer.check_val_every_n_epoch", "10", *stop]
    train(tmp_path, *args, "--trainer.callbacks", "LearningRateMonitor", "--trainer.logger", "CSVLogger")
    assert summary(tmp_path)["epochs"] == 20  # stopped early: the validation of epoch 19 did not improve on 9's
    run_dir = next(tmp_path.glob("linear/version_0"))
    with open(run_dir / "metrics.csv") as file:  # CSVLogger's, in the run's folder
        rows = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in rows if row["train/loss"]] == list(range(20))
    assert [float(row["lr-SGD"]) for row in rows if row.get("lr-SGD")] == [0.2] * 20  # the second callback's
    config = (run_dir / "config.yaml").read_text()
    assert "callbacks.EarlyStopping" in config and "callbacks.LearningRateMonitor" in config


def test_print_config_is_the_same_whichever_spelling(capsys):
    flat = ["--max_epochs", "70", "--callbacks", "EarlyStopping", "--callbacks.monitor", "val/loss"]
    flat += ["--logger=CSVLogger"]
    spelt = ["--trainer.max_epochs", "70", "--trainer.callbacks", "EarlyStopping"]
    spelt += ["--trainer.callbacks.monitor", "val/loss", "--trainer.logger=CSVLogger"]
    printed = []
    for args in (flat, ["fit", *spelt]):
        with pytest.raises(SystemExit):
            main([*args, "--model", "linear", "--print_config"])
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]
    config = yaml.safe_load(printed[0])
    assert config["max_epochs"] == 70 and config["callbacks"][0]["init_args"]["monitor"] == "val/loss"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--trainer.max_epohcs", "5"], "unrecognized option --trainer.max_epohcs; did you mean --trainer.max_epochs"),
        (["--max_epohcs", "5"], "unrecognized option --max_epohcs; did you mean --max_epochs"),
        (["--trainer.max-epochs=5"], "unrecognized option --trainer.max-epochs=5; did you mean --trainer.max_epochs?"),
        (["--trainer.seed", "1"], "unrecognized option --trainer.seed; did you mean --seed"),  # the command's own
    ],
)
def test_a_misspelt_trainer_option_gets_one_line_and_no_run(tmp_path, capsys, args, line):
    assert main(["fit", *args, "--model", "linear", "--default_root_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: ") and err.count("\n") == 1 and line in err, err
    assert list(tmp_path.iterdir()) == []


def test_validate_prints_what_evaluate_prints(checkpoint):
    cwd = checkpoint.parents[4]  # above lightning_logs: `last` is this run's
    validated = run_script("train.py", "validate", "--ckpt_path", "last", cwd=cwd)
    evaluated = run_script("evaluate.py", "--ckpt", "last", cwd=cwd)
    assert validated.returncode == evaluated.returncode == 0, validated.stderr
    assert validated.stdout == evaluated.stdout
    assert "from the validation split" in validated.stdout and "accuracy    0." in validated.stdout


def test_test_evaluates_the_test_split(tmp_path, checkpoint, capsys):
    """`test` evaluates the checkpoint's test split: --data.test_size's own points, else the validation split."""
    assert main(["test", f"--ckpt_path={checkpoint}"]) == 0
    tested = capsys.readouterr().out
    assert evaluate_main(["--ckpt", str(checkpoint)]) == 0
    same = "the test split (the validation split: trained without --data.test_size)"
    assert same in tested and tested.replace(same, "the validation split") == capsys.readouterr().out
    train(tmp_path, "--model", "linear", "--max_epochs", "100", "--data.test_size", "60", "--pictures", "false")
    apart = next(tmp_path.glob("linear/version_0/checkpoints/last.ckpt"))
    _, data = load_run(apart)
    points = tmp_path / "test_points.csv"
    rows = [[*x, y] for x, y in zip(data.x_test.tolist(), data.y_test.tolist())]
    points.write_text("".join(",".join(map(str, row)) + "\n" for row in rows))
    capsys.readouterr()  # the run's table
    assert main(["test", "--ckpt_path", str(apart)]) == 0
    tested = capsys.readouterr().out
    assert evaluate_main(["--ckpt", str(apart), "--data", str(points)]) == 0
    assert "points      60 from the test split\n" in tested
    assert tested.replace("the test split", str(points)) == capsys.readouterr().out  # the same numbers


def test_predict_writes_what_predict_py_writes(tmp_path, checkpoint, capsys):
    points = tmp_path / "points.csv"
    points.write_text("x1,x2\n0,0\n1.5,-2\n-3,4\n")
    assert main(["predict", "--ckpt_path", str(checkpoint), "--input", str(points), "--output", "-"]) == 0
    written = capsys.readouterr()
    assert predict_main(["--ckpt", str(checkpoint), "--input", str(points), "--output", str(tmp_path / "p.csv")]) == 0
    assert written.out == (tmp_path / "p.csv").read_text()
    assert written.out.startswith("x1,x2,class,p0,p1,p2,p3\n0,0,") and written.out.count("\n") == 4
    assert written.err == "predict.py: 3 predictions written to stdout\n"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["validate"], "train.py: error: validate needs a checkpoint: --ckpt_path PATH (or last"),
        (["test", "--data", "points.csv"], "train.py: error: test needs a checkpoint: --ckpt_path PATH"),
        (["validate", "--ckpt_path", "missing.ckpt"], "evaluate.py: error: checkpoint missing.ckpt does not exist"),
        (["predict", "--ckpt_path", "missing.ckpt", "--input", "p.csv"], "predict.py: error: the following arguments"),
        (["validate", "--ckpt_path", "last", "--max_epochs", "5"], "evaluate.py: error: unrecognized arguments: --max"),
    ],
)
def test_a_stage_given_bad_input_is_one_line_and_status_2(tmp_path, monkeypatch, capsys, args, line):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(line) and captured.err.count("\n") == 1, captured.err
    assert captured.out == "" and list(tmp_path.iterdir()) == []


def test_help_names_the_subcommands_and_offers_no_internal_class(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    short = capsys.readouterr().out
    assert done.value.code == 0 and len(short.splitlines()) <= 120
    assert "--trainer.max_epochs" in short and "validate and test --ckpt_path PATH" in short and "predict" in short
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    assert "--ckpt_path given as --ckpt" in capsys.readouterr().out
    full = run_script("train.py", "--help", "trainer", cwd=tmp_path)
    assert full.returncode == 0
    assert (
        "lightning.pytorch.callbacks.EarlyStopping" in full.stdout and "mlnet_lightning.data.MoonsData" in full.stdout
    )
    assert [name for name in INTERNAL if name in full.stdout] == []
