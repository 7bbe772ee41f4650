"""Using a trained network with nothing but its checkpoint: evaluate.py and predict.py."""

from __future__ import annotations

import csv
import errno
import itertools
import math
import os
import statistics
import sys
from argparse import ArgumentError
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from jsonargparse.typing import NonNegativeInt
from torch import Tensor

from mlnet_lightning.checkpoints import load_run
from mlnet_lightning.cli import print_error
from mlnet_lightning.files import atomic_writer
from mlnet_lightning.models import TutorialModule
from mlnet_lightning.models.base import as_probabilities
from mlnet_lightning.seeds import StackedCopies

# Points held in memory at once (tens of MB): a file of any length is read, and predicted, a chunk at a time.
CHUNK_ROWS = 65_536
FLOAT32_MAX = torch.finfo(torch.float32).max
# Where float32, the networks' numbers, rounds to infinity: half a step (2**104 there) beyond its largest value.
FLOAT32_OVERFLOW = FLOAT32_MAX + 2.0**103


class PointsError(ValueError):
    """A CSV of points that cannot be used: missing, unreadable, empty, or with a bad cell."""


class PredictionError(RuntimeError):
    """Predictions that cannot be written (exit status 1): the network's output is not finite, or the write failed."""


@dataclass
class Points:
    """A chunk of a CSV's points: their line numbers, their cells as written (predictions echo them), as
    tensors, and their labels."""

    lines: list[int]
    rows: list[list[str]]
    x: Tensor
    y: Tensor | None


class PointsFile:
    """A CSV of rows of `num_features` numbers, each followed by a class label when `num_classes` is given,
    read a chunk at a time so that memory stays bounded whatever its length. A first row of names only is a
    header; blank lines are skipped."""

    def __init__(self, path: str | Path, num_features: int, num_classes: int | None = None) -> None:
        self.path = Path(path)
        self.num_features = num_features
        self.num_classes = num_classes
        self.columns = feature_names(num_features) + ["label"] * (num_classes is not None)
        self.header: list[str] | None = None  # known once the first chunk is read

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[Points]:
        """The points, `size` at a time; a PointsError at the first bad row, or at the end when there was none."""
        if not self.path.exists():
            raise PointsError(f"{self.path} does not exist")
        found = False
        try:
            with self.path.open(newline="", encoding="utf-8-sig") as file:  # -sig: a spreadsheet's byte-order mark
                numbered = enumerate(csv.reader(file), start=1)
                lines = ((number, row) for number, row in numbered if any(cell.strip() for cell in row))
                first = next(lines, None)
                if first and not any(_is_number(cell) for cell in first[1]):
                    self._check_width(*first)
                    self.header = [cell.strip() for cell in first[1]]
                elif first:
                    lines = itertools.chain([first], lines)
                while chunk := list(itertools.islice(lines, size)):
                    found = True
                    yield self._points(chunk)
        except UnicodeDecodeError:
            raise PointsError(f"cannot read {self.path}: it is not a text CSV file") from None
        except (OSError, csv.Error) as error:
            raise PointsError(f"cannot read {self.path}: {getattr(error, 'strerror', None) or error}") from None
        if not found:
            but_for = " but for its header" if self.header else ""
            raise PointsError(f"{self.path} has no points: it is empty{but_for}")

    def _points(self, lines: list[tuple[int, list[str]]]) -> Points:
        features, labels = [], []
        for number, row in lines:
            self._check_width(number, row)
            features.append([_number(self.path, number, cell) for cell in row[: self.num_features]])
            if self.num_classes is not None:
                labels.append(_label(self.path, number, row[self.num_features], self.num_classes))
        x = torch.tensor(features, dtype=torch.float32)
        y = torch.tensor(labels, dtype=torch.int64) if self.num_classes is not None else None
        return Points([number for number, _ in lines], [[cell.strip() for cell in row] for _, row in lines], x, y)

    def _check_width(self, number: int, row: list[str]) -> None:
        if len(row) != len(self.columns):
            columns = f"{len(row)} column{'s' * (len(row) != 1)}"
            expected = f"expected {len(self.columns)}: {','.join(self.columns)}"
            raise PointsError(f"{self.path} line {number}: {columns}, {expected}")


def feature_names(num_features: int) -> list[str]:
    return [f"x{i + 1}" for i in range(num_features)]


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
    if abs(value) >= FLOAT32_OVERFLOW:  # finite as Python's float64, infinite in the network
        limit = f"at most ±{FLOAT32_MAX:.8g}"
        raise PointsError(
            f"{path} line {number}: {cell.strip()!r} is too large for the network's float32 numbers ({limit})"
        )
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
def evaluate(model: L.LightningModule, chunks: Iterable[tuple[Tensor, Tensor]]) -> tuple[list[float], list[int], int]:
    """Each copy's loss (the network's own, as in training, when it has one) and number of correct classes
    over the points of all chunks, and the number of points."""
    loss_sums: Tensor | int = 0
    correct: Tensor | int = 0
    count = 0
    for x, y in chunks:
        # float32 loss times a count below 2**24, in float64: exact, so one chunk's mean comes back unchanged
        loss_sums = loss_sums + _losses(model, x, y).double() * len(y)
        correct = correct + copy_probabilities(model, x).argmax(-1).eq(y).sum(-1)
        count += len(y)
    return (loss_sums / count).tolist(), correct.tolist(), count


def _losses(model: L.LightningModule, x: Tensor, y: Tensor) -> Tensor:
    """Each copy's mean loss over the points, (copies,)."""
    if isinstance(model, StackedCopies):
        return model.losses(model(x), y)
    output = model(x)
    own_loss = isinstance(model, TutorialModule)
    loss = model.loss(output, y) if own_loss else F.nll_loss(as_probabilities(output).log(), y)
    return loss.reshape(1)


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


CKPT_HELP = "a checkpoint written by train.py, or 'last': the newest last.ckpt of the runs under ./lightning_logs"


def checkpoint_path(ckpt: str) -> str:
    """--ckpt as given, or for `last` the most recently written last.ckpt under ./lightning_logs (train.py's
    default log folder, its comparisons included)."""
    if ckpt != "last":
        return ckpt
    written = list(Path("lightning_logs").rglob("last.ckpt"))
    if not written:
        raise ValueError(f"--ckpt last: no run under {Path.cwd() / 'lightning_logs'} has a last.ckpt; give its path")
    return str(max(written, key=lambda path: path.stat().st_mtime))


def held_out(data: L.LightningDataModule, split: str) -> tuple[tuple[Tensor, Tensor], str]:
    """The points of a split the run held out, `val` or `test`, and their name. Without a test split of its
    own (--data.test_size) the data tests on its validation split, as Lightning's test stage does."""
    if split == "val":
        return (data.x_val, data.y_val), "the validation split"
    separate = data.x_test is not data.x_val
    same = " (the validation split: trained without --data.test_size)"
    return (data.x_test, data.y_test), "the test split" + ("" if separate else same)


def evaluate_main(argv: list[str] | None = None, split: str = "val") -> int:
    """evaluate.py: loss and accuracy of a checkpoint on its validation split or on a labelled CSV. A
    checkpoint of stacked copies (train.py --seeds / --lrs) gets a line per copy, then their means."""
    # `split`: the held-out split evaluated without --data; "test" for train.py test (the docstring is --help's).
    parser = ArgumentParser(prog="evaluate.py", description=evaluate_main.__doc__, exit_on_error=False)
    parser.add_argument("--ckpt", type=str, required=True, help=CKPT_HELP)
    parser.add_argument(
        "--data",
        type=str | None,
        default=None,
        help="a CSV of labelled points x1,x2,label (default: the validation split held out in training)",
    )
    try:
        args = parser.parse_args(argv)
        args.ckpt = checkpoint_path(args.ckpt)
        model, data = load_from_working_directory(args.ckpt)
        if args.data is None:
            points, source = held_out(data, split)
            chunks = [points]
        else:
            labelled = PointsFile(args.data, data.num_features, data.num_classes)
            chunks, source = ((chunk.x, chunk.y) for chunk in labelled.chunks()), args.data
        losses, correct, points = evaluate(model, chunks)
    except (ArgumentError, ValueError) as error:
        print_error("evaluate.py", error)
        return 2
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
    parser.add_argument("--ckpt", type=str, required=True, help=CKPT_HELP)
    parser.add_argument(
        "--copy",
        type=NonNegativeInt | None,
        default=None,
        help="with a checkpoint of stacked copies: the copy to predict with, numbered as in evaluate.py's table "
        "(default: the mean of the copies' probabilities)",
    )
    parser.add_argument("--input", type=str, required=True, help="a CSV of points x1,x2 (a header row is allowed)")
    parser.add_argument(
        "--output", type=str, required=True, help="the CSV to write: x1,x2,class,p0,p1,... ('-': stdout)"
    )
    try:
        args = parser.parse_args(argv)
        args.ckpt = checkpoint_path(args.ckpt)
        model, data = load_from_working_directory(args.ckpt)
        if args.copy is not None and not isinstance(model, StackedCopies):
            raise ValueError(f"--copy {args.copy}: {args.ckpt} holds one network, not stacked copies")
        if Path(args.output).is_dir():  # a wrong option, told before predicting anything
            raise PointsError(f"cannot write predictions to {args.output}: {os.strerror(errno.EISDIR)}")
        with prediction_output(args.output) as output:
            count = write_predictions(output, model, PointsFile(args.input, data.num_features), args.copy)
    except (ArgumentError, ValueError) as error:
        print_error("predict.py", error)
        return 2
    except PredictionError as error:
        print_error("predict.py", error)
        return 1
    destination = "stdout" if args.output == "-" else args.output
    print(f"predict.py: {count} predictions written to {destination}", file=sys.stderr)
    return 0


@contextmanager
def prediction_output(path: str) -> Iterator[IO[str]]:
    """Where predictions go: stdout for "-", else `path`, written whole or not at all. A failed write
    raises PredictionError naming it."""
    try:
        if path == "-":
            yield sys.stdout
            sys.stdout.flush()  # a write's failure here, not in the interpreter's exit
        else:
            with atomic_writer(path, "w", newline="", encoding="utf-8") as file:
                yield file
    except OSError as error:
        if path == "-":  # a closed pipe (`| head`) would fail again, in a traceback, at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        destination = "stdout" if path == "-" else path
        raise PredictionError(f"cannot write predictions to {destination}: {error.strerror or error}") from None


def write_predictions(output: IO[str], model: L.LightningModule, points: PointsFile, copy: int | None) -> int:
    """Predict the points a chunk at a time, writing each chunk's rows x1,x2,class,p0,p1,... (the cells as
    written, the probabilities to float32's precision); returns the number of points."""
    writer = csv.writer(output, lineterminator="\n")
    count = 0
    for chunk in points.chunks():
        classes, probabilities = predict(model, chunk.x, copy)
        _check_finite(points.path, chunk, probabilities)
        if not count:
            header = points.header or feature_names(points.num_features)
            writer.writerow([*header, "class", *(f"p{k}" for k in range(probabilities.shape[1]))])
        for row, label, row_probabilities in zip(chunk.rows, classes.tolist(), probabilities.tolist()):
            writer.writerow([*row, str(label), *(f"{p:.8g}" for p in row_probabilities)])
        count += len(chunk.rows)
    return count


def _check_finite(path: Path, chunk: Points, probabilities: Tensor) -> None:
    """A NaN or infinite probability is no prediction: refuse the first point that has one."""
    not_finite = probabilities.isfinite().all(-1).logical_not().nonzero()
    if len(not_finite):
        row = int(not_finite[0])
        given = ",".join(f"{p:.8g}" for p in probabilities[row].tolist())
        raise PredictionError(
            f"{path} line {chunk.lines[row]}: the network's class probabilities for this point are not finite ({given})"
        )
