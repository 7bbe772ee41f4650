"""Pictures of a run: the data, the decision boundary as it forms, the confusion matrix and the curves.

They go to TensorBoard (IMAGES, and HPARAMS with the run's final metrics) and, at the end, into the
run folder as PNG files. Snapshots taken during training are drawn with tensor operations only;
matplotlib (its Agg canvas, which needs no display) draws the figures once training is over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.lines import Line2D
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from mlnet_lightning.files import atomic_writer
from mlnet_lightning.models.base import as_probabilities

# matplotlib's tab10, so that the snapshots and the PNG files give a class the same colour.
PALETTE = torch.tensor(
    [
        [0x1F, 0x77, 0xB4],
        [0xFF, 0x7F, 0x0E],
        [0x2C, 0xA0, 0x2C],
        [0xD6, 0x27, 0x28],
        [0x94, 0x67, 0xBD],
        [0x8C, 0x56, 0x4B],
        [0xE3, 0x77, 0xC2],
        [0x7F, 0x7F, 0x7F],
        [0xBC, 0xBD, 0x22],
        [0x17, 0xBE, 0xCF],
    ]
)


def class_colour(label: int) -> tuple[float, float, float]:
    return tuple((PALETTE[label % len(PALETTE)] / 255).tolist())


@dataclass(frozen=True)
class Grid:
    """A square grid of `size` x `size` points over a rectangle of the plane, laid out as an image:
    row 0 is the top (largest x2), column 0 the left (smallest x1)."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float
    size: int = 200

    @classmethod
    def covering(cls, points: Tensor, margin: float = 0.1, size: int = 200) -> Grid:
        """The grid over the points' bounding box, widened by `margin` of its extent on each side."""
        low, high = points.min(0).values.tolist(), points.max(0).values.tolist()
        pads = [margin * (h - lo or 1.0) for lo, h in zip(low, high)]
        return cls(low[0] - pads[0], high[0] + pads[0], low[1] - pads[1], high[1] + pads[1], size)

    def points(self, device: torch.device | str = "cpu") -> Tensor:
        """The grid's points, (size * size, 2), row by row."""
        x1 = torch.linspace(self.x_min, self.x_max, self.size, device=device)
        x2 = torch.linspace(self.y_max, self.y_min, self.size, device=device)
        rows, cols = torch.meshgrid(x2, x1, indexing="ij")
        return torch.stack([cols.flatten(), rows.flatten()], dim=-1)

    def pixel(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Row and column of the grid point nearest to each point (clamped to the grid)."""
        last = self.size - 1
        cols = ((points[:, 0] - self.x_min) / (self.x_max - self.x_min) * last).round().long().clamp(0, last)
        rows = ((self.y_max - points[:, 1]) / (self.y_max - self.y_min) * last).round().long().clamp(0, last)
        return rows, cols

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """matplotlib's imshow extent: the grid points are the centres of the pixels."""
        dx, dy = (self.x_max - self.x_min) / (self.size - 1) / 2, (self.y_max - self.y_min) / (self.size - 1) / 2
        return self.x_min - dx, self.x_max + dx, self.y_min - dy, self.y_max + dy


@torch.no_grad()
def class_probabilities(module: L.LightningModule, x: Tensor) -> Tensor:
    """The network's class probabilities at the points `x`, computed in eval mode."""
    was_training = module.training
    module.eval()
    try:
        output = module(x.to(module.device, module.dtype))
    finally:
        module.train(was_training)
    return as_probabilities(output)


def predict_grid(module: L.LightningModule, grid: Grid) -> tuple[Tensor, Tensor]:
    """Predicted class and its probability at every grid point, as (size, size) tensors on the CPU."""
    confidence, classes = class_probabilities(module, grid.points(module.device)).max(-1)
    shape = (grid.size, grid.size)
    return classes.view(shape).cpu(), confidence.view(shape).float().cpu()


def shade(classes: Tensor, confidence: Tensor, num_classes: int) -> Tensor:
    """An RGB uint8 image (H, W, 3): each pixel its class's colour, paler where the network is unsure."""
    colours = PALETTE[classes % len(PALETTE)].float()
    # Rescale from a uniform guess (1 / classes) to certainty; never pure white, so the class shows.
    certainty = ((confidence - 1 / num_classes) / (1 - 1 / num_classes)).clamp(0, 1)
    strength = (0.15 + 0.55 * certainty).unsqueeze(-1)
    return (255 - strength * (255 - colours)).round().to(torch.uint8)


def draw_points(image: Tensor, grid: Grid, x: Tensor, y: Tensor) -> Tensor:
    """A copy of `image` with each point drawn as a dark-edged 5 x 5 square in its class colour."""
    image = image.clone()
    rows, cols = grid.pixel(x.cpu())
    last = grid.size - 1
    for radius, colours in ((2, torch.tensor([40, 40, 40])), (1, PALETTE[y.cpu() % len(PALETTE)])):
        offsets = torch.arange(-radius, radius + 1)
        for dr in offsets:
            for dc in offsets:
                image[(rows + dr).clamp(0, last), (cols + dc).clamp(0, last)] = colours.to(torch.uint8)
    return image


class SeriesRecorder(Logger):
    """Keeps every logged point in memory, so the curves are drawn without reading the event file back."""

    def __init__(self) -> None:
        super().__init__()
        self.series: dict[str, tuple[list[int], list[float]]] = {}

    @property
    def name(self) -> str:
        return "series"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.log_columns([step], {name: [value] for name, value in metrics.items()})

    def log_columns(self, steps: Sequence[int], columns: dict[str, list[float]]) -> None:
        """The points of several steps at once (the fast path's bulks: a call a step cost 3.5 us)."""
        for name, values in columns.items():
            logged_steps, logged_values = self.series.setdefault(name, ([], []))
            logged_steps.extend(steps)
            logged_values.extend(map(float, values))

    def last(self, name: str) -> float | None:
        return self.series[name][1][-1] if name in self.series else None


class Pictures(L.Callback):
    """Logs the hyperparameters with the run's final metrics (TensorBoard's HPARAMS tab) and, when
    `draw`, the pictures: `data`, `decision_boundary` (snapshots at the start, ~`snapshots` times
    during training and at the end, the image step being the number of epochs trained) and
    `confusion_matrix` in TensorBoard's IMAGES tab, and data.png, decision_boundary.png,
    confusion_matrix.png and curves.png in the run folder.

    The data and the boundary need 2-D inputs and a network with `forward`; other runs get the rest.
    """

    def __init__(
        self, model_name: str, hparams: dict[str, Any] | None = None, draw: bool = True, snapshots: int = 10
    ) -> None:
        self.model_name, self.hparams, self.draw, self.snapshots = model_name, hparams or {}, draw, snapshots
        self.recorder = SeriesRecorder()
        self.grid: Grid | None = None
        self.next_snapshot = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The module writes its per-epoch points to every logger; one more logger collects them for curves.png.
        if stage == "fit" and self.recorder not in trainer.loggers:
            self.recorder.series.clear()
            trainer.loggers = [*trainer.loggers, self.recorder]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        if self.draw and trainer.is_global_zero and data.num_features == 2 and has_forward(pl_module):
            self.grid = Grid.covering(torch.cat([data.x_train, data.x_val]).cpu())
            self.snapshot(trainer, pl_module, trainer.current_epoch)

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int | None:
        """The epoch after which the next snapshot is due (for the fast path, which trains the epochs
        before it in bulk)."""
        if self.grid is None:
            return None
        due = max(epoch, self.next_snapshot - 1)
        return min(due, trainer.max_epochs - 1) if trainer.max_epochs >= 0 else due

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.current_epoch + 1  # Lightning counts the epoch once it has ended
        if self.grid is not None and (done >= self.next_snapshot or done == trainer.max_epochs):
            self.snapshot(trainer, pl_module, done)

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Log the decision boundary after `step` epochs with the training points on top, drawn
        without matplotlib to keep training fast."""
        data = trainer.datamodule
        image = shade(*predict_grid(pl_module, self.grid), data.num_classes)
        image = draw_points(image, self.grid, data.x_train, data.y_train)
        self.log_image(trainer, "decision_boundary", image.numpy(), step)
        # Unbounded runs (max_epochs -1) take one every 1,000 epochs.
        every = max(1, math.ceil(trainer.max_epochs / self.snapshots)) if trainer.max_epochs > 0 else 1000
        self.next_snapshot = (step // every + 1) * every

    def log_image(self, trainer: L.Trainer, tag: str, image: np.ndarray, step: int) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, image, step, dataformats="HWC")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_hyperparams(trainer, pl_module)
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast under DDP: every process asks
        if self.draw and trainer.is_global_zero:
            self.save_pictures(trainer, pl_module, folder)

    def log_hyperparams(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The run's options beside its final numbers, so that runs compare in the HPARAMS tab."""
        metrics = {"hp/val_acc": self.recorder.last("val/acc"), "hp/final_loss": self.recorder.last("train/loss")}
        metrics = {name: value for name, value in metrics.items() if value is not None}
        params = plain({"model": self.model_name, **self.hparams, **pl_module.hparams})
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, metrics)

    def save_pictures(self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path) -> None:
        data, done = trainer.datamodule, trainer.current_epoch
        title = f"{type(pl_module).__name__} after {done} epochs"
        figures: dict[str, tuple[Figure, int | None]] = {"curves": (curves_figure(self.recorder.series, title), None)}
        if data.num_features == 2:
            figures["data"] = (data_figure(data), 0)
        if has_forward(pl_module):
            predicted = class_probabilities(pl_module, data.x_val).argmax(-1)
            matrix = MulticlassConfusionMatrix(data.num_classes).to(predicted.device)(predicted, data.y_val).cpu()
            figures["confusion_matrix"] = (confusion_figure(matrix, title), done)
            if self.grid is not None:
                boundary = shade(*predict_grid(pl_module, self.grid), data.num_classes)
                # The last snapshot already holds this boundary in TensorBoard.
                figures["decision_boundary"] = (boundary_figure(boundary, self.grid, data, title), None)
        for name, (figure, step) in figures.items():
            image = render(figure)
            with atomic_writer(folder / f"{name}.png", "wb") as file:
                imsave(file, image, format="png")
            if step is not None:
                self.log_image(trainer, name, image, step)


def plain(value: Any) -> Any:
    """`value` with its numbers as plain bool, int or float, also inside dicts: TensorBoard logs their
    subclasses (jsonargparse's PositiveInt, PositiveFloat) as text, which HPARAMS cannot sort or plot."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    kind = next((kind for kind in (bool, int, float) if isinstance(value, kind)), None)
    return kind(value) if kind else value


def has_forward(module: L.LightningModule) -> bool:
    """Whether the network can be asked for predictions (a plain LightningModule may have no forward)."""
    return type(module).forward is not L.LightningModule.forward


# The figures of the PNG files.


def new_figure(width: float, height: float, **margins: float) -> Figure:
    # A bare Figure on the Agg canvas: no pyplot, no display, no global backend switched. Fixed
    # margins, because a layout engine measures every text several times and more than doubles the drawing time.
    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(**margins)
    return figure


def render(figure: Figure) -> np.ndarray:
    """The figure as an RGB uint8 array (H, W, 3)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def scatter_points(ax: Any, data: Any) -> None:
    """The training (circles) and validation (triangles) points in their class colours, with a legend."""
    for x, y, marker in ((data.x_train, data.y_train, "o"), (data.x_val, data.y_val, "^")):
        colours = (PALETTE[y.cpu() % len(PALETTE)] / 255).numpy()
        ax.scatter(*x.cpu().T.numpy(), s=14, marker=marker, c=colours, edgecolors="0.15", linewidths=0.6)
    classes = range(data.num_classes)
    handles = [Line2D([], [], ls="", marker="s", color=class_colour(c), label=f"class {c}") for c in classes]
    for marker, label in (("o", "train"), ("^", "validation")):
        handles.append(Line2D([], [], ls="", marker=marker, mfc="white", mec="0.15", label=label))
    ax.legend(handles=handles, fontsize="small", framealpha=0.8, loc="best")


def data_figure(data: Any) -> Figure:
    figure = new_figure(6, 5, left=0.1, right=0.97, bottom=0.1, top=0.93)
    ax = figure.add_subplot()
    scatter_points(ax, data)
    ax.set(xlabel="x1", ylabel="x2")
    ax.set_title(f"{type(data).__name__}: {len(data.x_train)} training and {len(data.x_val)} validation points")
    return figure


def boundary_figure(boundary: Tensor, grid: Grid, data: Any, title: str) -> Figure:
    figure = new_figure(6, 5, left=0.1, right=0.97, bottom=0.1, top=0.89)
    ax = figure.add_subplot()
    ax.imshow(boundary.numpy(), extent=grid.extent, aspect="auto", interpolation="nearest")
    scatter_points(ax, data)
    ax.set(xlabel="x1", ylabel="x2", xlim=grid.extent[:2], ylim=grid.extent[2:])
    ax.set_title(f"{title}\nbackground: predicted class, paler where less confident", fontsize="medium")
    return figure


def confusion_figure(matrix: Tensor, title: str) -> Figure:
    figure = new_figure(5.5, 4.5, left=0.12, right=0.98, bottom=0.11, top=0.88)
    ax = figure.add_subplot()
    shown = ax.imshow(matrix.numpy(), cmap="Blues")
    figure.colorbar(shown, ax=ax, label="validation points")
    classes = range(len(matrix))
    for true in classes:
        for predicted in classes:
            count = int(matrix[true, predicted])
            colour = "white" if count > matrix.max() / 2 else "black"
            ax.text(predicted, true, str(count), ha="center", va="center", color=colour)
    ax.set(xlabel="predicted class", ylabel="true class", xticks=list(classes), yticks=list(classes))
    accuracy = float(matrix.diag().sum() / matrix.sum())
    ax.set_title(f"{title}\nvalidation confusion matrix, accuracy {accuracy:.4f}", fontsize="medium")
    return figure


def curves_figure(series: dict[str, tuple[list[int], list[float]]], title: str) -> Figure:
    figure = new_figure(10, 4, left=0.07, right=0.98, bottom=0.12, top=0.85, wspace=0.22)
    for position, (quantity, label) in enumerate((("loss", "loss"), ("acc", "accuracy")), start=1):
        ax = figure.add_subplot(1, 2, position)
        for split, name in (("train", "train"), ("val", "validation")):
            steps, values = series.get(f"{split}/{quantity}", ([], []))
            ax.plot(steps, values, label=name)
        ax.set(xlabel="epoch", ylabel=label, title=label.capitalize())
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title)
    return figure
