"""What every network shares: the Lightning steps of all four stages, their metrics and the optimizer."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import instantiate_class
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from mlnet_lightning.checkpoints import RUN_KEY, class_path
from mlnet_lightning.fastpath import FastPath
from mlnet_lightning.threads import FitThreads


class TrainingDiverged(ArithmeticError):
    """The training loss became NaN or infinite: the run stops rather than train on garbage."""


class HandUpdate(torch.optim.Optimizer):
    """A network's hand-written update (its `update` method) seen as an optimizer: Lightning then counts
    its steps (`global_step`, `max_steps`) as it counts any optimizer's."""

    def __init__(self, update: Callable[[], None], tensors: list[Tensor], lr: float) -> None:
        super().__init__(tensors, {"lr": lr})
        self.update = update

    def step(self, closure: Callable[[], float] | None = None) -> None:
        if closure is not None:
            closure()
        self.update()


def as_probabilities(output: Tensor) -> Tensor:
    """A network's output as class probabilities: the tutorial's softmax outputs as they are, logits
    through softmax (told apart by the output itself, so that any network of one's own works)."""
    is_distribution = output.ge(0).all() and torch.allclose(output.sum(-1), output.new_ones(()), atol=1e-4)
    return output if is_distribution else output.softmax(-1)


def passed_on_signature(cls: type) -> inspect.Signature | None:
    """The constructor of a subclass that passes `**kwargs` on, with what it passes on spelt out (its parent's
    options: lr, logits, seed, ...), so that inspect.signature, help() and a notebook's completion show them;
    None where its own signature says everything."""
    own = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    if not own or own[-1].kind is not inspect.Parameter.VAR_KEYWORD:
        return None
    named = {parameter.name for parameter in own}
    parent = inspect.signature(cls.__mro__[1]).parameters.values()
    passed_on = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parent if p.name not in named]
    return inspect.Signature([*own[:-1], *passed_on])


class SteppedModule(L.LightningModule):
    """A LightningModule whose training step is its `step`, the arithmetic of one batch, and Lightning's
    logging of the values `step` gives, written once here.

    Lightning's loop runs it batch by batch. The Trainer is also given a FastPath callback
    (`configure_callbacks`), which trains the epochs that nothing would observe by the same `step`, and
    steps aside wherever it cannot vouch for that (`mlnet_lightning.fastpath`); `fast_path = False` keeps
    every epoch Lightning's.
    """

    fast_path = True

    def step(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of the batch (x, y) to minimise, and the batch's values (detached) to log."""
        raise NotImplementedError

    def logged(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """What self.log gets of a step's values (or of several steps', stacked in leading dimensions), one
        scalar a step by name; Lightning averages them over the epoch's batches, weighted by their size."""
        return values

    def epoch_values(self) -> dict[str, Tensor]:
        """Each of `step`'s values over the epoch's steps so far (`epoch_steps`: values and batch sizes), averaged
        as self.log averages its batches."""
        steps = getattr(self, "epoch_steps", [])
        if not steps:
            return {}
        sizes = [size for _, size in steps]
        return {name: weighted_mean(torch.stack([v[name] for v, _ in steps], -1), sizes) for name in steps[0][0]}

    def configure_callbacks(self) -> list[L.Callback]:
        return [FitThreads(), FastPath()]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss, values = self.step(x, y)
        check_finite(loss.detach().view(1), self.current_epoch)
        if batch_idx == 0 or not hasattr(self, "epoch_steps"):
            self.epoch_steps: list[tuple[dict[str, Tensor], int]] = []
        self.epoch_steps.append((values, len(y)))
        # Under DDP each process sees its share: sync_dist makes the epoch's values those of all the points.
        distributed = self.trainer.world_size > 1
        self.log_dict(self.logged(values), on_step=False, on_epoch=True, batch_size=len(y), sync_dist=distributed)
        if self.automatic_optimization:
            return loss
        self.manual_backward(loss)
        self.optimizers().step()
        return loss.detach()


class TutorialModule(SteppedModule):
    """Base of the networks: a subclass makes its parameters and writes `forward`.

    It may also replace `loss` (default: cross-entropy) or `configure_optimizers` (default: the
    `optimizer` chosen, else SGD at `lr`), or define `update()`, a hand-written gradient step that then
    replaces the optimizer (manual optimization), as the tutorial's first sections do.

    Training is Lightning's own, an epoch a pass over the training data; where nothing Lightning
    documents would see the difference, the fast path trains several epochs within one hook
    (`fast_path = False` turns that off).
    """

    # Properties that torch.jit.script (to_torchscript) must not compile: only training reads them.
    __jit_unused_properties__ = [*L.LightningModule.__jit_unused_properties__, "updates_by_hand", "network_name"]

    def __init__(
        self,
        lr: float = 0.2,
        logits: bool = False,
        seed: int = 0,
        num_features: int = 2,
        num_classes: int = 4,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
    ) -> None:
        """
        Args:
            lr: learning rate of the default SGD and of hand-written updates.
            logits: return logits instead of softmax probabilities, fixing the tutorial's double
                softmax (F.cross_entropy applies log-softmax itself).
            seed: torch.manual_seed right before the parameters are made, as in the tutorial.
            num_features: inputs per point (taken from the data).
            num_classes: classes (taken from the data).
            optimizer: a torch.optim class and its options as `{"class_path": ..., "init_args": {...}}`
                (what --optimizer gives); None is SGD at `lr`.
            lr_scheduler: a torch.optim.lr_scheduler class and its options, stepped once per epoch;
                None keeps the learning rate constant.
        """
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr}")
        self.save_hyperparameters()
        # forward reads this, not self.hparams, which TorchScript (to_torchscript) cannot compile.
        self.logits = logits
        if self.updates_by_hand and (optimizer or lr_scheduler):
            name = type(self).__name__.lower()
            raise ValueError(f"{name} updates its tensors by hand, as its tutorial section does: it takes no optimizer")
        self.automatic_optimization = not self.updates_by_hand
        # A plain dict keeps the metrics out of the module tree, which a network's update may walk every
        # epoch (self.parameters(), zero_grad()): metric modules made that 14 us of a 420 us epoch.
        self.stage_metrics: dict[str, Metric] = {}
        for stage in ("val", "test"):
            self.stage_metrics[f"{stage}/loss"] = MeanMetric()
            self.stage_metrics[f"{stage}/acc"] = MulticlassAccuracy(num_classes, average="micro")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__signature__ = passed_on_signature(cls)

    @property
    def network_name(self) -> str:
        """The network's name, as the progress bar and the messages give it."""
        return type(self).__name__

    @property
    def updates_by_hand(self) -> bool:
        """Whether the network writes its own gradient step (`update`) instead of using torch.optim."""
        return callable(getattr(self, "update", None))

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the network's and the data's classes, so that evaluate.py, predict.py and export.py rebuild
        the run from the checkpoint however it was trained (train.py's RunCheckpoint adds the metrics)."""
        data = self.trainer.datamodule
        record = checkpoint.setdefault(RUN_KEY, {})
        record.update(model_class=class_path(self), data_class=class_path(data) if data is not None else None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint of another network is refused in one line naming both, before its tensors meet
        this network's (Lightning's load_state_dict would list every mismatched key)."""
        saved, expected = checkpoint["state_dict"], self.state_dict()
        fits = saved.keys() == expected.keys() and all(saved[k].shape == v.shape for k, v in expected.items())
        if not fits:
            holds = checkpoint.get(RUN_KEY, {}).get("model_class", "another network").rpartition(".")[2]
            raise ValueError(
                f"the checkpoint holds a {holds}, not a {type(self).__name__}: "
                f"load it with {holds}.load_from_checkpoint"
            )

    def setup(self, stage: str) -> None:
        """Refuse, before any step, data of another shape than the network was made for: from Python a
        network's sizes are its constructor's (train.py takes them from the data)."""
        data = self.trainer.datamodule
        sizes = (getattr(data, "num_features", None), getattr(data, "num_classes", None))
        made_for = (self.hparams.num_features, self.hparams.num_classes)
        if None not in sizes and sizes != made_for:
            raise ValueError(
                f"{type(self).__name__} was made for {made_for[0]} inputs and {made_for[1]} classes, "
                f"{type(data).__name__} has {sizes[0]} and {sizes[1]}: make it with "
                f"num_features={sizes[0]}, num_classes={sizes[1]}"
            )

    def configure_optimizers(self) -> OptimizerLRScheduler:
        if self.updates_by_hand:
            # Moving a module to a device makes copies of raw tensors (buffers that require grad, as
            # scratch keeps them) that are no longer leaves, so they would collect no gradient.
            for tensor in self.buffers():
                if tensor.requires_grad and not tensor.is_leaf:
                    tensor.detach_().requires_grad_()
            tensors = [t for t in (*self.parameters(), *self.buffers()) if t.requires_grad]
            return HandUpdate(self.update, tensors, self.hparams.lr)
        if self.hparams.optimizer is None:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        else:
            optimizer = instantiate_class(self.parameters(), self.hparams.optimizer)
        if self.hparams.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": instantiate_class(optimizer, self.hparams.lr_scheduler)}

    def metric(self, name: str) -> Metric:
        """The stage metric `name` on the module's device: outside the module tree, metrics do not
        follow the module's moves (`.to` costs 23 us even when already there, six times an epoch that
        Lightning runs)."""
        metric = self.stage_metrics[name]
        return metric if metric.device == self.device else metric.to(self.device)

    def step(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        output = self(x)
        loss = self.loss(output, y)
        values = {"train/loss": loss.detach(), "train/acc": output.detach().argmax(-1).eq(y).float().mean()}
        if self.hparams.lr_scheduler is not None:  # the rate this batch trains at, as it moves
            values["train/lr"] = torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"], device=loss.device)
        return loss, values

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluate("val", *batch)

    def on_validation_epoch_end(self) -> None:
        self.log_metrics("val/loss", "val/acc")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluate("test", *batch)

    def on_test_epoch_end(self) -> None:
        self.log_metrics("test/loss", "test/acc")

    def predict_step(self, batch: Tensor | tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """Class probabilities of the batch's points."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return as_probabilities(self(x))

    def evaluate(self, stage: str, x: Tensor, y: Tensor) -> None:
        output = self(x)
        self.metric(f"{stage}/loss").update(self.loss(output, y), weight=len(y))
        self.metric(f"{stage}/acc").update(output, y)

    def log_metrics(self, *names: str) -> None:
        """Log the stage metrics `names` for the epoch (torchmetrics reduces them over DDP processes;
        sync_dist then averages equal values and tells Lightning so), and reset them."""
        values = {name: self.metric(name).compute() for name in names}
        for name in names:
            self.stage_metrics[name].reset()
        self.log_dict(values, sync_dist=self.trainer.world_size > 1)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """The tutorial's torch.manual_seed right before a network's parameters are drawn, with the caller's CPU
    random state given back afterwards: making a network changes no one else's random numbers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def weighted_mean(values: Tensor, sizes: list[int]) -> Tensor:
    """The epoch-end value of self.log(..., batch_size=size) called with each of the last dimension's values
    in turn, as Lightning's result collection reduces it: its sum of value * size from 0, one batch after the
    other, divided by the sum of the sizes, in the default dtype (float32 at least) as it keeps them."""
    dtype = torch.promote_types(torch.get_default_dtype(), torch.float32)
    total = torch.zeros(values.shape[:-1], dtype=dtype, device=values.device)
    for column, size in zip(values.unbind(-1), sizes):
        total = total + column * size
    return total / sum(sizes)


def check_finite(losses: Tensor, first_epoch: int) -> None:
    """Stop at the first NaN or infinite loss of `losses` (epochs first_epoch, first_epoch + 1, ...),
    before it is logged or checkpointed."""
    finite = torch.isfinite(losses)
    if not finite.all():
        first = int(finite.logical_not().nonzero()[0])
        raise TrainingDiverged(
            f"the loss became {losses[first].item()} at epoch {first_epoch + first} "
            "(the learning rate may be too large)"
        )
