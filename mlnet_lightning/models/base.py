"""What every network shares: metrics, logging, the optimizer and the fast training loop."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import instantiate_class
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from mlnet_lightning.data import EpochChunk
from mlnet_lightning.models.epochs import EagerEpochs, ReplayedEpochs
from mlnet_lightning.points import log_points


class TrainingDiverged(ArithmeticError):
    """The training loss became NaN or infinite: the run stops rather than train on garbage."""


def count_trainer_steps(trainer: L.Trainer, steps: int) -> None:
    """Add optimizer steps taken outside LightningOptimizer to trainer.global_step."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.total
    progress.ready += steps
    progress.completed += steps


def is_plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a step of `optimizer` is exactly p -= lr * grad: SGD without momentum, weight decay,
    maximize or step hooks."""
    hooks = (optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks)
    return (
        type(optimizer) is torch.optim.SGD
        and not any(hooks)
        and not (_global_optimizer_pre_hooks or _global_optimizer_post_hooks)
        and all(g["momentum"] == 0 and g["weight_decay"] == 0 and not g["maximize"] for g in optimizer.param_groups)
    )


@torch.no_grad()
def descend(optimizer: torch.optim.SGD) -> None:
    """A plain SGD step and zero_grad() as one foreach kernel per parameter group, bitwise equal to
    optimizer.step() (which adds -lr * grad tensor by tensor): a sixth of an epoch of these networks
    is SGD.step's own bookkeeping (measured: 345 against 410 us an epoch for `sequential`)."""
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            torch._foreach_add_(params, [p.grad for p in params], alpha=-group["lr"])
        for p in params:
            p.grad = None


class TutorialModule(L.LightningModule):
    """Base of the networks: a subclass makes its parameters and writes `forward`.

    It may also replace `loss` (default: cross-entropy), `configure_optimizers` (default: the
    `optimizer` chosen, else SGD at `lr`) or `update` (default: the optimizer's step), as the
    tutorial's sections do.

    Speed: one Lightning step trains a whole `EpochChunk` of epochs, because these networks are so
    small that the Trainer's per-step machinery would otherwise cost more than the arithmetic.
    Per-epoch losses and predictions stay on the device and reach the loggers once a chunk.
    """

    trains_epoch_chunks = True  # asks the data module for EpochChunks instead of batches
    replay_epochs: bool | None = None  # CUDA graph replay of epochs; None: wherever it is safe

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
            lr: learning rate of plain gradient descent.
            logits: return logits instead of softmax probabilities, fixing the tutorial's double
                softmax (F.cross_entropy applies log-softmax itself).
            seed: torch.manual_seed right before the parameters are made, as in the tutorial.
            num_features: inputs per point (taken from the data).
            num_classes: classes (taken from the data).
            optimizer: a torch.optim class and its options as `{"class_path": ..., "init_args": {...}}`
                (what --optimizer gives); None is SGD at `lr`.
            lr_scheduler: a torch.optim.lr_scheduler class and its options, stepped once per data
                epoch; None keeps the learning rate constant.
        """
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.direct_steps = False
        self.descends = False  # steps a plain SGD optimizer with `descend`
        self._replayer: ReplayedEpochs | None = None
        # A plain dict keeps the metrics out of the module tree, which a network's update may walk every
        # epoch (self.parameters(), zero_grad()): three metric modules made that 14 us of a 420 us epoch.
        self.stage_metrics = {
            "train/acc": MulticlassAccuracy(num_classes, average="micro"),
            "val/acc": MulticlassAccuracy(num_classes, average="micro"),
            "val/loss": MeanMetric(),
        }
        self.history: dict[str, float] = {}  # first and latest values of the logged series

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        if self.hparams.optimizer is None:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        else:
            optimizer = instantiate_class(self.parameters(), self.hparams.optimizer)
        if self.hparams.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": instantiate_class(optimizer, self.hparams.lr_scheduler)}

    def update(self) -> None:
        """Apply and clear the gradients."""
        if self.descends:
            descend(self.trainer.optimizers[0])
            return
        optimizer = self.trainer.optimizers[0] if self.direct_steps else self.optimizers()
        optimizer.step()
        optimizer.zero_grad()

    def backpropagate(self, loss: Tensor) -> None:
        # Not named `backward`: that is LightningModule's hook, which manual_backward itself calls.
        if self.direct_steps:
            loss.backward()
        else:
            self.manual_backward(loss)

    def metric(self, name: str) -> Metric:
        """The stage metric `name` on the module's device: outside the module tree, metrics do not
        follow the module's moves (23 us when already there; once a chunk or validation)."""
        return self.stage_metrics[name].to(self.device)

    def on_fit_start(self) -> None:
        # Lightning's per-step wrappers (backward hooks, LightningOptimizer) cost more than a step of
        # these networks; they are needed only to scale gradients or to synchronise processes.
        trainer = self.trainer
        self.direct_steps = trainer.world_size == 1 and getattr(trainer.precision_plugin, "scaler", None) is None
        # A scheduler expects optimizer.step() to be called (it warns otherwise).
        self.descends = (
            self.direct_steps
            and len(trainer.optimizers) == 1
            and not trainer.lr_scheduler_configs
            and is_plain_sgd(trainer.optimizers[0])
        )
        # Moving a module to a device turns raw tensors (buffers that require grad) into non-leaves.
        for tensor in self.buffers():
            if tensor.requires_grad and not tensor.is_leaf:
                tensor.detach_().requires_grad_()

    def train_epoch(self, chunk: EpochChunk, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """One pass over the training data; returns its mean loss, the outputs and their targets."""
        if chunk.full_batch:
            return self.train_batch(chunk.x, chunk.y)
        losses, outputs, targets = zip(*(self.train_batch(x, y) for x, y in chunk.batches(chunk.order(epoch))))
        sizes = torch.tensor([len(y) for y in targets], device=self.device)
        return (torch.stack(losses) * sizes).sum() / sizes.sum(), torch.cat(outputs), torch.cat(targets)

    def train_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One gradient step; returns the batch's loss, outputs and targets."""
        output = self(x)
        loss = self.loss(output, y)
        self.backpropagate(loss)
        self.update()
        return loss.detach(), output.detach(), y

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and predicted classes on held-out data, in eval mode."""
        was_training = self.training
        self.eval()
        output = self(x)
        self.train(was_training)
        return self.loss(output, y), output.argmax(-1)

    def epoch_runner(self, chunk: EpochChunk) -> EagerEpochs | ReplayedEpochs:
        """Replay a captured CUDA graph where it is safe: full batch, one process, no gradient
        scaler or autocast, SGD (others must be built capturable) and no LR schedule; eager
        otherwise, and always on CPU unless tests ask for replays."""
        replay = self.replay_epochs
        if replay is None:
            trainer = self.trainer
            replay = (
                self.device.type == "cuda"
                and self.direct_steps
                and trainer.precision == "32-true"
                and not trainer.lr_scheduler_configs
                and all(isinstance(optimizer, torch.optim.SGD) for optimizer in trainer.optimizers)
            )
        if not (replay and chunk.full_batch):
            return EagerEpochs(self, chunk)
        if self._replayer is None or not self._replayer.fits(chunk):
            self._replayer = ReplayedEpochs(self, chunk, capacity=len(chunk.epochs))
        return self._replayer.start(chunk)

    def training_step(self, chunk: EpochChunk) -> None:
        runner = self.epoch_runner(chunk)
        val_epochs, val_results, rates = [], [], []
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler if self.trainer.lr_scheduler_configs else None
        for epoch in chunk.epochs:
            loss = runner.train(epoch)
            if scheduler is not None:  # never replayed: a captured graph holds its learning rate fixed
                rates.append(scheduler.optimizer.param_groups[0]["lr"])  # the rate this epoch trained at
                self.step_lr_scheduler(scheduler, loss)
            if chunk.validates_inside(epoch):
                val_epochs.append(epoch)
                val_results.append(self.evaluate(*chunk.val))
        losses, predictions, targets = runner.results()
        self.check_finite(losses, chunk.epochs)
        # One comparison scores the whole chunk's curve (a torchmetrics call per epoch would cost a
        # tenth of an epoch). Stacking copies the replay buffers, which the next chunk rewrites.
        train = torch.stack([losses, predictions.eq(targets).float().mean(-1)])
        train = self.mean_over_processes(train, targets.shape[-1])
        train_series = {"train/loss": train[0], "train/acc": train[1]}
        if rates:
            train_series["train/lr"] = torch.tensor(rates)
        self.log_series(chunk.epochs, train_series)
        if val_epochs:
            val_losses, val_predictions = zip(*val_results)
            val = torch.stack([torch.stack(val_losses), torch.stack(val_predictions).eq(chunk.val[1]).float().mean(-1)])
            val = self.mean_over_processes(val, len(chunk.val[1]))
            self.log_series(val_epochs, {"val/loss": val[0], "val/acc": val[1]})
        self.count_steps(len(chunk.epochs) * chunk.batches_per_epoch)
        # Callbacks see data epochs too: checkpoints are named after the last epoch trained. Not for
        # the loggers: log_points wrote these, and Lightning would add points at its own step count.
        # torchmetrics scores the stage (the chunk's last epoch, over every process) for them.
        accuracy = self.metric("train/acc")
        accuracy.update(predictions[-1], targets[-1])
        metrics = {"train/loss": train[0, -1], "train/acc": accuracy.compute(), "epoch": float(chunk.epochs[-1])}
        accuracy.reset()
        self.log_dict(metrics, logger=False)

    def mean_over_processes(self, means: Tensor, count: int) -> Tensor:
        """Means over this process's `count` points made means over every process's points (DDP: one
        all-reduce per chunk); unchanged in a single process."""
        if self.trainer.world_size == 1:
            return means
        sums = torch.cat([means.flatten() * count, means.new_tensor([count])])
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        return (sums[:-1] / sums[-1]).view_as(means)

    def step_lr_scheduler(self, scheduler: LRScheduler | ReduceLROnPlateau, loss: Tensor) -> None:
        """Schedules count data epochs, as in a plain loop: Lightning, stepping once per Lightning
        epoch (and never under manual optimization), would see one step per chunk."""
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(loss)  # it watches the training loss
        else:
            scheduler.step()

    def check_finite(self, losses: Tensor, epochs: range) -> None:
        """Stop at the chunk's first NaN or infinite loss, before it is logged or checkpointed; one
        device sync per chunk, none per epoch."""
        finite = torch.isfinite(losses)
        if not finite.all():
            first = int(finite.logical_not().nonzero()[0])
            raise TrainingDiverged(
                f"the loss became {losses[first].item()} at epoch {epochs[first]} "
                f"(the learning rate {self.hparams.lr} may be too large)"
            )

    def count_steps(self, steps: int) -> None:
        """Stepping without LightningOptimizer leaves trainer.global_step, which checkpointing and
        loggers read, uncounted; count the chunk's steps at once."""
        if self.direct_steps or not self.trainer.optimizers:
            count_trainer_steps(self.trainer, steps)

    def validation_step(self, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        loss, prediction = self.evaluate(x, y)
        self.metric("val/acc").update(prediction, y)
        self.metric("val/loss").update(loss, weight=len(y))

    def on_validation_epoch_end(self) -> None:
        metrics = {name: self.stage_metrics[name].compute() for name in ("val/loss", "val/acc")}
        for name in metrics:
            self.stage_metrics[name].reset()
        # For callbacks (checkpoint on val/acc, early stopping). torchmetrics has already reduced the
        # values over DDP processes; sync_dist averages equal values and tells Lightning so.
        self.log_dict(metrics, logger=False, sync_dist=True)
        if not self.trainer.sanity_checking and "epoch" in self.history:
            self.log_series([int(self.history["epoch"])], {k: v.view(1) for k, v in metrics.items()})

    def log_series(self, epochs: Sequence[int], series: dict[str, Tensor]) -> None:
        """Write one point per epoch of each series to every logger, with one device sync."""
        columns = {name: values.tolist() for name, values in series.items()}
        log_points(self.loggers, epochs, columns)
        if epochs[0] == 0 and "train/loss" in columns:
            self.history["initial_loss"] = columns["train/loss"][0]
        self.history.update({name: column[-1] for name, column in columns.items()})
        self.history["epoch"] = max(self.history.get("epoch", 0), epochs[-1])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = checkpoint.get("history", {})
