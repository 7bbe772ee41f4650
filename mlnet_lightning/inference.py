"""Using a trained network with nothing but its checkpoint: evaluate.py and predict.py."""

from __future__ import annotations

import csv
import math
import statistics
import sys
from argparse import ArgumentError
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from jsonargparse.typing import NonNegativeInt
from torch import Tensor

from mlnet_lightning.checkpoints import load_run
from mlnet_lightning.cli import print_error
from mlnet_lightning.models import TutorialModule
from mlnet_lightning.models.base import as_probabilities
from mlnet_lightning.seeds import StackedCopies


class PointsError(ValueError):
    """A CSV of points that cannot be used: missing, unreadable, empty, or with a bad cell."""


@dataclass
class Points:
    """Points read from a CSV: the cells as written (predictions echo them), as tensors, and the labels."""

    header: list[str] | None
    rows: list[list[str]]
    x: Tensor
    y: Tensor | None


def read_points(path: str | Path, num_features: int, num_classes: int | None = None) -> Points:
    """Rows of `num_features` numbers, each followed by a class label when `num_classes` is given.
    A first row of names only is a header; blank lines are skipped."""
    path = Path(path)
    if not path.exists():
        raise PointsError(f"{path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:  # -sig: a spreadsheet's byte-order mark
            rows = enumerate(csv.reader(file), start=1)
            lines = [(number, row) for number, row in rows if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise PointsError(f"cannot read {path}: it is not a text CSV file") from None
    except (OSError, csv.Error) as error:
        raise PointsError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    expected = feature_names(num_features) + ["label"] * (num_classes is not None)
    header = None
    if lines and not any(_is_number(cell) for cell in lines[0][1]):
        _check_width(path, *lines[0], expected)
        header = [cell.strip() for cell in lines.pop(0)[1]]
    if not lines:
        raise PointsError(f"{path} has no points: it is empty" + (" but for its header" if header else ""))
    features, labels = [], []
    for number, row in lines:
        _check_width(path, number, row, expected)
        features.append([_number(path, number, cell) for cell in row[:num_features]])
        if num_classes is not None:
            labels.append(_label(path, number, row[num_features], num_classes))
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.int64) if num_classes is not None else None
    return Points(header, [[cell.strip() for cell in row] for _, row in lines], x, y)


def feature_names(num_features: int) -> list[str]:
    return [f"x{i + 1}" for i in range(num_features)]


def _check_width(path: Path, number: int, row: list[str], expected: list[str]) -> None:
    if len(row) != len(expected):
        columns = f"{len(row)} column{'s' * (len(row) != 1)}"
        raise PointsError(f"{path} line {number}: {columns}, expected {len(expected)}: {','.join(expected)}")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _number(path: Path, number: int, cell: str) -> float:
    if not _is_number(cell):
        raise PointsError(f"{path} line {number}: {cell.strip()!r} is not a number")
    value = float(cell)
    if not math.isfinite(value):
        raise PointsError(f"{path} line {number}: {cell.strip()!r} is not a finite number")
    return value


def _label(path: Path, number: int, cell: str, num_classes: int) -> int:
    text = cell.strip()
    if not (text.isdigit() and int(text) < num_classes):
        raise PointsError(f"{path} line {number}: label {text!r} is not a class (0 to {num_classes - 1})")
    return int(text)


@torch.no_grad()
def copy_probabilities(model: L.LightningModule, x: Tensor) -> Tensor:
    """Class probabilities of the points, (copies, points, classes): one copy for a network, every copy
    of a --seeds / --lrs checkpoint."""
    if isinstance(model, StackedCopies):
        outputs = model(x)  # class-planar: (copies, classes, points)
        return (outputs if model.softmax_output else outputs.softmax(1)).transpose(1, 2)
    return as_probabilities(model(x)).unsqueeze(0)


@torch.no_grad()
def evaluate(model: L.LightningModule, x: Tensor, y: Tensor) -> tuple[list[float], list[int]]:
    """Each copy's loss (the network's own, as in training, when it has one) and number of correct classes."""
    correct = copy_probabilities(model, x).argmax(-1).eq(y).sum(-1).tolist()
    if isinstance(model, StackedCopies):
        return model.losses(model(x), y).tolist(), correct
    output = model(x)
    own_loss = isinstance(model, TutorialModule)
    loss = model.loss(output, y) if own_loss else F.nll_loss(as_probabilities(output).log(), y)
    return [loss.item()], correct


@torch.no_grad()
def predict(model: L.LightningModule, x: Tensor, copy: int | None = None) -> tuple[Tensor, Tensor]:
    """Predicted classes and class probabilities: of copy `copy` of stacked copies, else of their mean."""
    probabilities = copy_probabilities(model, x)
    if copy is not None:
        if not 0 <= copy < len(probabilities):
            raise ValueError(f"--copy {copy}: the checkpoint holds copies 0 to {len(probabilities) - 1}")
        probabilities = probabilities[copy]
    else:
        probabilities = probabilities.mean(0)
    return probabilities.argmax(-1), probabilities


def load_from_working_directory(checkpoint: str) -> tuple[L.LightningModule, L.LightningDataModule]:
    """`load_run`, where a network of one's own (`train.py --model my_file.MyNet`) imports from the
    working directory, as it does for train.py."""
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    return load_run(checkpoint)


def evaluate_main(argv: list[str] | None = None) -> int:
    """evaluate.py: loss and accuracy of a checkpoint on its validation split or on a labelled CSV. A
    checkpoint of stacked copies (train.py --seeds / --lrs) gets a line per copy, then their means."""
    parser = ArgumentParser(prog="evaluate.py", description=evaluate_main.__doc__, exit_on_error=False)
    parser.add_argument("--ckpt", type=str, required=True, help="a checkpoint written by train.py")
    parser.add_argument(
        "--data",
        type=str | None,
        default=None,
        help="a CSV of labelled points x1,x2,label (default: the validation split held out in training)",
    )
    try:
        args = parser.parse_args(argv)
        model, data = load_from_working_directory(args.ckpt)
        if args.data is None:
            x, y, source = data.x_val, data.y_val, "the validation split"
        else:
            points = read_points(args.data, data.num_features, data.num_classes)
            x, y, source = points.x, points.y, args.data
        losses, correct = evaluate(model, x, y)
    except (ArgumentError, ValueError) as error:
        print_error("evaluate.py", error)
        return 2
    points = len(y)
    if isinstance(model, StackedCopies):
        network = model.hparams.network.rpartition(".")[2]
        print(f"checkpoint  {args.ckpt} ({model.copies} stacked copies of {network})")
        print(f"points      {points} from {source}")
        rows = [("copy", "seed", "lr", "loss", "accuracy")]
        for i, (seed, lr, loss, right) in enumerate(zip(model.seeds, model.lrs, losses, correct)):
            rows.append((str(i), str(seed), f"{lr:g}", f"{loss:.6f}", f"{right / points:.4f} ({right} of {points})"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        print("\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows))
        print(f"loss        {statistics.fmean(losses):.6f} (mean of the copies)")
        print(f"accuracy    {statistics.fmean(correct) / points:.4f} (mean of the copies)")
        return 0
    print(f"checkpoint  {args.ckpt} ({type(model).__name__})")
    print(f"points      {points} from {source}")
    print(f"loss        {losses[0]:.6f}")
    print(f"accuracy    {correct[0] / points:.4f} ({correct[0]} of {points})")
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    """predict.py: the class and class probabilities of each point of a CSV, written as a CSV. For a
    checkpoint of stacked copies (train.py --seeds / --lrs): those of the copies' mean probabilities
    (their ensemble), or of one copy with --copy."""
    parser = ArgumentParser(prog="predict.py", description=predict_main.__doc__, exit_on_error=False)
    parser.add_argument("--ckpt", type=str, required=True, help="a checkpoint written by train.py")
    parser.add_argument(
        "--copy",
        type=NonNegativeInt | None,
        default=None,
        help="with a checkpoint of stacked copies: the copy to predict with, numbered as in evaluate.py's table "
        "(default: the mean of the copies' probabilities)",
    )
    parser.add_argument("--input", type=str, required=True, help="a CSV of points x1,x2 (a header row is allowed)")
    parser.add_argument("--output", type=str, required=True, help="the CSV to write: x1,x2,class,p0,p1,...")
    try:
        args = parser.parse_args(argv)
        model, data = load_from_working_directory(args.ckpt)
        points = read_points(args.input, data.num_features)
        if args.copy is not None and not isinstance(model, StackedCopies):
            raise ValueError(f"--copy {args.copy}: {args.ckpt} holds one network, not stacked copies")
        classes, probabilities = predict(model, points.x, args.copy)
        write_predictions(args.output, points, classes, probabilities)
    except (ArgumentError, ValueError) as error:
        print_error("predict.py", error)
        return 2
    print(f"predict.py: {len(classes)} predictions written to {args.output}", file=sys.stderr)
    return 0


def write_predictions(path: str, points: Points, classes: Tensor, probabilities: Tensor) -> None:
    header = points.header or feature_names(points.x.shape[1])
    lines = [[*header, "class", *(f"p{k}" for k in range(probabilities.shape[1]))]]
    for row, label, row_probabilities in zip(points.rows, classes.tolist(), probabilities.tolist()):
        lines.append([*row, str(label), *(f"{p:.8g}" for p in row_probabilities)])
    try:
        with open(path, "w", newline="") as file:
            csv.writer(file, lineterminator="\n").writerows(lines)
    except OSError as error:
        raise PointsError(f"cannot write predictions to {path}: {error.strerror or error}") from None
