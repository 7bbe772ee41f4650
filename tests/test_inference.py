"""A trained network used from its checkpoint alone: evaluate.py and predict.py round-trip training's numbers."""

import csv
import json
import os
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from mlnet_lightning.checkpoints import load_run
from mlnet_lightning.data import BlobData
from mlnet_lightning.inference import CHUNK_ROWS, evaluate_main, predict_main
from mlnet_lightning.models import Linear, Sequential
from mlnet_lightning.models.base import as_probabilities
from tests.conftest import run_script
from tests.test_tutorial import read_scalars


@pytest.fixture
def checkpoint(linear_run):
    return linear_run / "checkpoints" / "last.ckpt"


@pytest.fixture
def trained(linear_run) -> dict:
    return json.loads((linear_run / "summary.json").read_text())


def write_csv(path, rows, header=None):
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows([header, *rows] if header else rows)
    return path


def read_csv_text(text: str) -> list[list[str]]:
    return list(csv.reader(text.splitlines()))


def read_csv(path) -> list[list[str]]:
    return read_csv_text(path.read_text())


def evaluate_output(capsys) -> dict[str, str]:
    return dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())


def test_the_checkpoint_rebuilds_the_network_and_its_data_without_the_command(checkpoint):
    model = Linear.load_from_checkpoint(checkpoint)  # no arguments: the hyperparameters are in the checkpoint
    expected = {"lr": 0.2, "logits": False, "seed": 0, "num_features": 2, "num_classes": 4}
    assert dict(model.hparams) == {**expected, "optimizer": None, "lr_scheduler": None}
    loaded, data = load_run(checkpoint)  # the classes too
    assert type(loaded) is Linear and type(data) is BlobData and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert torch.equal(data.x_val, BlobData().x_val)


def test_evaluate_reports_the_validation_numbers_of_training(checkpoint, trained, capsys):
    assert evaluate_main(["--ckpt", str(checkpoint)]) == 0
    report = evaluate_output(capsys)
    correct, _, total = report["accuracy"].split("(")[1].rstrip(")").split()
    assert int(total) == 250 and int(correct) / int(total) == pytest.approx(trained["val_acc"], abs=1e-6)
    (_, val_loss), *_ = reversed(read_scalars(checkpoint.parent.parent)["val/loss"])  # the last validation's
    assert float(report["loss"]) == pytest.approx(val_loss, abs=1e-6)


def test_predict_classifies_the_validation_points_as_training_did(checkpoint, trained, tmp_path):
    data = BlobData()
    points = write_csv(tmp_path / "points.csv", [[repr(v) for v in row] for row in data.x_val.tolist()], ["a", "b"])
    assert predict_main(["--ckpt", str(checkpoint), "--input", str(points), "--output", str(tmp_path / "out.csv")]) == 0
    header, *rows = read_csv(tmp_path / "out.csv")
    assert header == ["a", "b", "class", "p0", "p1", "p2", "p3"]  # the input's own header is kept
    assert len(rows) == 250 and [row[:2] for row in rows] == read_csv(points)[1:]
    classes = torch.tensor([int(row[2]) for row in rows])
    probabilities = torch.tensor([[float(p) for p in row[3:]] for row in rows])
    assert classes.eq(data.y_val).float().mean().item() == pytest.approx(trained["val_acc"], abs=1e-6)
    assert torch.equal(probabilities.argmax(-1), classes)
    assert torch.allclose(probabilities.sum(-1), torch.ones(250), atol=1e-5)


def test_evaluate_on_a_labelled_csv_gives_the_same_accuracy(checkpoint, trained, tmp_path, capsys):
    data = BlobData()
    rows = [[repr(x1), repr(x2), str(y)] for (x1, x2), y in zip(data.x_val.tolist(), data.y_val.tolist())]
    labelled = write_csv(tmp_path / "labelled.csv", rows)  # no header
    assert evaluate_main(["--ckpt", str(checkpoint), "--data", str(labelled)]) == 0
    correct, _, total = evaluate_output(capsys)["accuracy"].split("(")[1].rstrip(")").split()
    assert int(correct) / int(total) == pytest.approx(trained["val_acc"], abs=1e-6)


@pytest.mark.parametrize("logits", [False, True])
def test_probabilities_come_from_softmax_only_for_logits(logits):
    model = Sequential(logits=logits)
    output = model(BlobData().x_val)
    expected = output.softmax(-1) if logits else output
    assert torch.equal(as_probabilities(output), expected)


@pytest.mark.parametrize("repeats", [1, CHUNK_ROWS // 250 + 1])
def test_evaluate_on_a_csv_of_the_validation_split_prints_its_numbers(checkpoint, tmp_path, capsys, repeats):
    """Read in one chunk, the same numbers to the last digit; in several, the same up to float32's rounding."""
    data = BlobData()
    assert evaluate_main(["--ckpt", str(checkpoint)]) == 0
    validation = evaluate_output(capsys)
    rows = [[repr(x1), repr(x2), str(y)] for (x1, x2), y in zip(data.x_val.tolist(), data.y_val.tolist())]
    labelled = write_csv(tmp_path / "labelled.csv", rows * repeats)
    assert evaluate_main(["--ckpt", str(checkpoint), "--data", str(labelled)]) == 0
    report = evaluate_output(capsys)
    assert report["points"] == f"{250 * repeats} from {labelled}"
    correct = int(validation["accuracy"].split("(")[1].split()[0])
    assert report["accuracy"] == f"{validation['accuracy'].split()[0]} ({correct * repeats} of {250 * repeats})"
    if repeats == 1:
        assert report["loss"] == validation["loss"]
    else:
        assert float(report["loss"]) == pytest.approx(float(validation["loss"]), abs=2e-6)


def test_ckpt_last_is_the_newest_runs_last_checkpoint_under_lightning_logs(tmp_path):
    """As a user runs them from a folder of theirs: train.py's logs go to ./lightning_logs, where
    `--ckpt last` finds the run written last."""
    options = ["--max_epochs", "100", "--checkpoint_every", "50", "--enable_progress_bar", "false"]
    assert run_script("train.py", "--model", "sequential", *options, cwd=tmp_path).returncode == 0
    newest = tmp_path / "lightning_logs" / "sequential" / "version_0" / "checkpoints" / "last.ckpt"
    older = tmp_path / "lightning_logs" / "compare" / "sequential" / "version_0"  # a run written an hour earlier
    shutil.copytree(newest.parent.parent, older)
    os.utime(older / "checkpoints" / "last.ckpt", (newest.stat().st_mtime - 3600,) * 2)
    by_name, by_path = (run_script("evaluate.py", "--ckpt", ckpt, cwd=tmp_path) for ckpt in ("last", str(newest)))
    assert by_name.returncode == 0, by_name.stderr
    assert (
        by_name.stdout.splitlines()[0]
        == f"checkpoint  {Path('lightning_logs/sequential/version_0/checkpoints/last.ckpt')} (Sequential)"
    )
    assert by_name.stdout.splitlines()[1:] == by_path.stdout.splitlines()[1:]
    (tmp_path / "points.csv").write_text("0.5,0.5\n")
    predicted = run_script("predict.py", "--ckpt", "last", "--input", "points.csv", "--output", "-", cwd=tmp_path)
    assert predicted.returncode == 0 and len(predicted.stdout.splitlines()) == 2, predicted.stderr  # header, point
    (tmp_path / "elsewhere").mkdir()
    refused = run_script("evaluate.py", "--ckpt", "last", cwd=tmp_path / "elsewhere")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"evaluate.py: error: --ckpt last: no run under {tmp_path / 'elsewhere' / 'lightning_logs'} has a last.ckpt; "
        "give its path\n"
    )


def test_a_checkpoint_trained_from_python_is_evaluated_and_predicted_as_lightning_does(tmp_path):
    """README's "From Python" run: evaluate.py and predict.py (processes of their own) give what
    trainer.validate and trainer.predict give; loading it into another network is one line naming both."""
    data = BlobData()
    trainer = L.Trainer(max_epochs=200, check_val_every_n_epoch=100, accelerator="cpu", default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    model = Sequential(logits=True)
    trainer.fit(model, datamodule=data)
    [validated] = trainer.validate(model, datamodule=data, verbose=False)
    [probabilities] = trainer.predict(model, datamodule=data)
    [ckpt] = tmp_path.rglob("*.ckpt")
    evaluated = run_script("evaluate.py", "--ckpt", str(ckpt))
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"loss        {validated['val/loss']:.6f}" in evaluated.stdout
    assert f"accuracy    {validated['val/acc']:.4f}" in evaluated.stdout
    write_csv(tmp_path / "points.csv", data.x_val.tolist())
    predicted = run_script("predict.py", "--ckpt", str(ckpt), "--input", str(tmp_path / "points.csv"), "--output", "-")
    assert predicted.returncode == 0, predicted.stderr
    written = torch.tensor([[float(cell) for cell in row[3:]] for row in read_csv_text(predicted.stdout)[1:]])
    assert torch.allclose(written, probabilities, atol=1e-6)
    with pytest.raises(ValueError, match="the checkpoint holds a Sequential, not a Linear: load it with Sequential"):
        Linear.load_from_checkpoint(ckpt)
