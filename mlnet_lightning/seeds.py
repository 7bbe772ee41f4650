"""Many copies of one network trained at once on one device: seed distributions and learning-rate sweeps.

Each copy is built exactly as a single run builds it (its own `torch.manual_seed`), then the copies'
weights are stacked along a leading copy dimension, so that an epoch of all of them is a handful of
batched matrix products and each copy follows the trajectory of its single run.

Activations are held class-planar, (copies, features, points), rather than the (copies, points,
classes) that `torch.func.vmap` produces: on the CPU, softmax, log-softmax and argmax over a last
dimension of 4 cost about 100 ns a row, so in that layout K copies cost as much as K single runs,
while over the middle dimension the same kernels run vectorised along the points.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from mlnet_lightning.checkpoints import import_class
from mlnet_lightning.fastpath.updates import is_plain_sgd
from mlnet_lightning.models import Linear, Parameter, Scratch, TutorialModule
from mlnet_lightning.models.base import HandUpdate, SteppedModule

# Elementwise activations: they apply to class-planar tensors unchanged.
ACTIVATIONS = (nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus)
HAND_UPDATES = (Scratch.update, Parameter.update)  # p -= lr * p.grad, written out by the tutorial


@dataclass
class Perceptron:
    """What stacking needs to know of one copy: affine layers with elementwise activations, the output
    (logits, or softmax probabilities as in the tutorial) and the loss."""

    weights: list[Tensor]  # (out, in) each
    biases: list[Tensor]  # (out,) each
    activations: list[Callable[[Tensor], Tensor] | None]  # after each layer
    softmax_output: bool
    loss: str  # "cross_entropy" (F.cross_entropy of the output) or "log_probability" (scratch's own)


def describe(network: TutorialModule) -> Perceptron:
    """Read the layers of a tutorial network, of an `mlp`-like network made of one nn.Sequential, or
    raise ValueError for anything else."""
    name = type(network).__name__
    logits = network.hparams.get("logits", False)
    if isinstance(network, Scratch):  # scratch, functional, parameter: raw (in, out) tensors
        weights = [network.weights1.T, network.weights2.T]
        biases, activations = [network.bias1, network.bias2], [torch.sigmoid, None]
    elif isinstance(network, Linear):
        weights, biases = [network.lin1.weight, network.lin2.weight], [network.lin1.bias, network.lin2.bias]
        activations = [torch.sigmoid, None]
    else:
        weights, biases, activations, logits = _read_sequential(network)
    losses = {TutorialModule.loss: "cross_entropy", Scratch.loss: "log_probability"}
    if type(network).loss not in losses:
        raise ValueError(f"{name} has a loss of its own, which --seeds and --lrs cannot stack")
    _check_plain_gradient_descent(network)
    detached = [t.detach().clone() for t in weights], [t.detach().clone() for t in biases]
    return Perceptron(*detached, activations, not logits, losses[type(network).loss])


def _read_sequential(network: nn.Module) -> tuple[list[Tensor], list[Tensor], list, bool]:
    unsupported = ValueError(
        f"{type(network).__name__} cannot be stacked by --seeds and --lrs: they need the tutorial's networks "
        "or one made of a single nn.Sequential of nn.Linear layers and elementwise activations"
    )
    sequentials = [m for m in network.children() if isinstance(m, nn.Sequential)]
    if len(sequentials) != 1:
        raise unsupported
    weights, biases, activations, logits = [], [], [], True
    for i, layer in enumerate(sequentials[0]):
        if isinstance(layer, nn.Linear) and layer.bias is not None:
            weights.append(layer.weight)
            biases.append(layer.bias)
            activations.append(None)
        elif isinstance(layer, ACTIVATIONS) and activations and activations[-1] is None:
            activations[-1] = layer
        elif isinstance(layer, nn.Softmax) and layer.dim in (-1, 1) and i == len(sequentials[0]) - 1:
            logits = False
        elif not isinstance(layer, nn.Identity):
            raise unsupported
    return weights, biases, activations, logits


def _check_plain_gradient_descent(network: TutorialModule) -> None:
    update = getattr(type(network), "update", None)
    if update in HAND_UPDATES:
        return
    optimizer = network.configure_optimizers() if update is None else None  # a scheduler makes it a dict
    if not (isinstance(optimizer, torch.optim.Optimizer) and is_plain_sgd(optimizer)):
        raise ValueError(f"{type(network).__name__} is not trained by plain gradient descent, which --seeds stacks")


# What building one copy of a tutorial network holds on the host until the copies are stacked: the
# module, its metrics and their state (measured: 64 KiB for `linear`, torch 2.13 on the CPU).
NETWORK_BYTES = 64 * 1024


def bytes_per_copy(network: TutorialModule, points: int) -> int:
    """The memory one stacked copy of `network` needs, estimated: the network built on the host, its
    weights three times (themselves, their gradients, the stacking's copy), and on `points` points each
    layer's outputs and their gradients (measured for `linear` on 75,000 points: 3.1 MB a copy beyond
    the first 50; this says 3.7 MB)."""
    layers = describe(network)
    parameters = sum(w.numel() + b.numel() for w, b in zip(layers.weights, layers.biases))
    outputs = sum(w.shape[0] for w in layers.weights)
    return NETWORK_BYTES + 4 * (3 * parameters + 2 * outputs * points)


def free_memory(device: torch.device) -> int:
    """Bytes free on `device`: the GPU's as CUDA reports them, else the memory the system has available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(network: TutorialModule, copies: int, points: int, device: torch.device) -> None:
    """Refuse, before any is built, `copies` copies of `network` training on `points` points that would
    not fit in the memory free on `device` (a run that swaps would crawl, or be killed mid-way)."""
    each = bytes_per_copy(network, points)
    free = free_memory(device)
    if copies * each > free:
        raise ValueError(
            f"{copies} stacked copies of {type(network).__name__} on {points} points need about "
            f"{human_bytes(copies * each)}, more than the {human_bytes(free)} free on the {device.type.upper()}: "
            f"ask for at most {free // each} copies (--seeds times the rates of --lrs)"
        )


def human_bytes(count: float) -> str:
    units = ["B", "kB", "MB", "GB", "TB"]
    while count >= 1000 and len(units) > 1:
        count /= 1000
        units.pop(0)
    return f"{count:.3g} {units[0]}"


class InitialLosses(L.Callback):
    """Each copy's initial loss, for the summary: its train/loss of epoch 0, as RunSummary's initial_loss."""

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int | None:
        """For the fast path: epoch 0's end."""
        return 0 if epoch == 0 else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: StackedCopies) -> None:
        if trainer.current_epoch == 0:
            pl_module.finals["initial_loss"] = pl_module.epoch_values()["train/loss"]


class StackedCopies(SteppedModule):
    """K copies of a network, one for each (learning rate, seed) pair, trained at once through the Trainer.

    Its output: each copy's final numbers and their distribution per learning rate (`extra_summary`,
    which goes into summary.json), TensorBoard histograms of the copies' validation loss and accuracy
    at every validation, and each learning rate's mean curves, a point per epoch.
    """

    def __init__(
        self,
        network: type[TutorialModule] | str,
        seeds: Sequence[int],
        lrs: Sequence[float],
        **network_options: Any,
    ) -> None:
        """
        Args:
            network: the network class, or its import path (`module.Class`, as a checkpoint records it);
                copy (lr, seed) is `network(lr=lr, seed=seed, **network_options)`.
            seeds: the seeds of each learning rate's copies.
            lrs: the learning rates; copies are ordered rate by rate, seed by seed within a rate.
            network_options: the rest of the network's arguments (logits, data shape).
        """
        super().__init__()
        if not seeds or not lrs or len(set(lrs)) < len(lrs) or len(set(seeds)) < len(seeds):
            raise ValueError(f"stacked copies need distinct seeds and learning rates, got {seeds} and {lrs}")
        if isinstance(network, str):
            network = import_class(network, TutorialModule)
        # Everything the copies are built from: a checkpoint rebuilds them (evaluate.py, predict.py).
        network_path = f"{network.__module__}.{network.__qualname__}"
        self.save_hyperparameters({"network": network_path, "seeds": list(seeds), "lrs": list(lrs), **network_options})
        self.automatic_optimization = False
        self.learning_rates = list(lrs)
        self.seeds = [seed for _ in lrs for seed in seeds]
        self.lrs = [lr for lr in lrs for _ in seeds]
        copies = [network(**network_options, lr=lr, seed=seed) for lr, seed in zip(self.lrs, self.seeds)]
        layers = [describe(copy) for copy in copies]
        self.activations = layers[0].activations
        self.softmax_output, self.loss_kind = layers[0].softmax_output, layers[0].loss
        self.weights = nn.ParameterList(torch.stack(w) for w in zip(*(copy.weights for copy in layers)))
        self.biases = nn.ParameterList(torch.stack(b).unsqueeze(-1) for b in zip(*(copy.biases for copy in layers)))
        self.register_buffer("step_sizes", torch.tensor(self.lrs).view(-1, 1, 1))
        self._check_against(copies)
        self.finals: dict[str, Tensor] = {}  # each copy's latest values
        self._val_sums: Tensor | None = None
        # Each learning rate's block of copies, and the suffix of its logged names.
        self.labels = [""] if len(self.learning_rates) == 1 else [f"/lr_{lr:g}" for lr in self.learning_rates]

    @property
    def copies(self) -> int:
        return len(self.seeds)

    def forward(self, x: Tensor) -> Tensor:
        """Every copy's output for points x (N, features), class-planar: (copies, classes, N)."""
        h = x.T
        for weight, bias, activation in zip(self.weights, self.biases, self.activations):
            if h.dim() == 2:  # the input, the same for every copy: one matrix product serves them all
                h = torch.addmm(bias.flatten(0, 1), weight.flatten(0, 1), h).view(self.copies, -1, len(x))
            else:
                h = torch.baddbmm(bias, weight, h)
            if activation is not None:
                h = activation(h)
        return h.softmax(1) if self.softmax_output else h

    def losses(self, outputs: Tensor, y: Tensor) -> Tensor:
        """Each copy's mean loss over the points, (copies,)."""
        targets = y.expand(self.copies, -1)
        if self.loss_kind == "cross_entropy":
            return F.cross_entropy(outputs, targets, reduction="none").mean(-1)
        probabilities = outputs if self.softmax_output else outputs.softmax(1)
        return -probabilities.gather(1, targets.unsqueeze(1)).log().mean(-1).squeeze(1)

    def accuracies(self, outputs: Tensor, y: Tensor) -> Tensor:
        """Each copy's fraction of points whose true class has the largest output. (Argmax over the
        middle dimension is slow on the CPU; an exact tie, where argmax would pick the first class,
        is vanishingly rare with float outputs.)"""
        true_class = outputs.gather(1, y.expand(self.copies, 1, -1))
        return true_class.eq(outputs.amax(1, keepdim=True)).float().mean(-1).squeeze(1)

    def loss(self, outputs: Tensor, y: Tensor) -> Tensor:
        """The copies' mean loss."""
        return self.losses(outputs, y).mean()

    def configure_optimizers(self) -> HandUpdate:
        return HandUpdate(self.update, [*self.weights, *self.biases], max(self.lrs))  # a rate per copy, below

    @torch.no_grad()
    def update(self) -> None:
        for tensor in (*self.weights, *self.biases):
            tensor -= tensor.grad * self.step_sizes
            tensor.grad = None

    def configure_callbacks(self) -> list[L.Callback]:
        return [*super().configure_callbacks(), InitialLosses()]

    def step(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        outputs = self(x)
        losses = self.losses(outputs, y)
        # The copies are independent: each gets the gradient of its own loss from the sum.
        return losses.sum(), {"train/loss": losses.detach(), "train/acc": self.accuracies(outputs.detach(), y)}

    def logged(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each learning rate's mean of the copies' values, and for callbacks and the summary the mean of all."""
        return {**self.block_means(values), **{name: copies.mean(-1) for name, copies in values.items()}}

    def block_means(self, series: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each learning rate's mean of the copies' values (the last dimension), by logged name."""
        means = {}
        for name, values in series.items():
            blocks = values.unflatten(-1, (len(self.labels), -1)).mean(-1)
            means.update({f"{name}_mean{label}": blocks[..., g] for g, label in enumerate(self.labels)})
        return means

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self(x)
        return self.losses(outputs, y), self.accuracies(outputs, y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        losses, accuracies = self.evaluate(x, y)
        sums = torch.stack([losses, accuracies, torch.ones_like(losses)]) * len(y)
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums

    def on_validation_epoch_end(self) -> None:
        losses, accuracies = self._val_sums[:2] / self._val_sums[2]
        self._val_sums = None
        self.log_dict({"val/loss": losses.mean(), "val/acc": accuracies.mean()}, logger=False)  # for callbacks
        if self.trainer.sanity_checking:
            return
        series = {"val/loss": losses, "val/acc": accuracies}
        self.finals.update(series)
        self.log_dict(self.block_means(series))
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                for (name, values), (g, label) in product(series.items(), enumerate(self.labels)):
                    block = values.unflatten(0, (len(self.labels), -1))[g]
                    logger.experiment.add_histogram(f"{name}{label}", block, global_step=self.current_epoch)

    def latest(self) -> dict[str, Tensor]:
        """Each copy's latest values: of the last epoch trained, and of the last validation."""
        return {**self.finals, **self.epoch_values()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["finals"] = self.latest()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.finals = checkpoint.get("finals", {})

    @torch.no_grad()
    def _check_against(self, copies: Sequence[TutorialModule]) -> None:
        """Stacking read each copy's layers from its attributes: check that the stack computes what
        each copy's own forward and loss compute."""
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, self.weights[0].shape[-1], generator=generator)
        y = torch.randint(self.weights[-1].shape[1], (64,), generator=generator)
        outputs = self(x)
        expected = torch.stack([copy(x) for copy in copies]).transpose(1, 2)
        expected_losses = torch.stack([copy.loss(copy(x), y) for copy in copies])
        same_outputs = torch.allclose(outputs, expected, atol=1e-6)
        if not (same_outputs and torch.allclose(self.losses(outputs, y), expected_losses)):
            raise ValueError(f"{type(copies[0]).__name__}'s forward is not the stack of the layers read from it")

    @property
    def extra_summary(self) -> dict[str, Any]:
        """For summary.json: each copy's final numbers, and their distribution per learning rate."""
        columns = {"seed": self.seeds, "lr": self.lrs}
        columns.update({SUMMARY_NAMES.get(name, name): values.tolist() for name, values in self.latest().items()})
        distributions = []
        for lr in self.learning_rates:
            block = [i for i, rate in enumerate(self.lrs) if rate == lr]
            seeds = [self.seeds[i] for i in block]
            entry: dict[str, Any] = {"lr": lr, "copies": len(block)}
            for name, higher_is_better in (("val_acc", True), ("val_loss", False), ("final_loss", False)):
                if name in columns:
                    entry[name] = distribution([columns[name][i] for i in block], seeds, higher_is_better)
            distributions.append(entry)
        return {"copies": columns, "distribution": distributions}


SUMMARY_NAMES = {"train/loss": "final_loss", "train/acc": "train_acc", "val/loss": "val_loss", "val/acc": "val_acc"}


def distribution(values: Sequence[float], seeds: Sequence[int], higher_is_better: bool) -> dict[str, float]:
    """Mean, standard deviation, extremes and median of the copies' values, and the seeds at the extremes."""
    best = max if higher_is_better else min
    worst = min if higher_is_better else max
    by_seed = list(zip(values, seeds))
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "best_seed": best(by_seed, key=lambda pair: pair[0])[1],
        "worst_seed": worst(by_seed, key=lambda pair: pair[0])[1],
    }
