"""The fast path's full-batch epochs replayed from one captured epoch: a CUDA graph on a GPU, a tape of
the epoch's operations on a CPU (`tape.py`).

The tutorial's networks are overhead-bound: an epoch is some seventy tiny operations, each costing
more to launch (on a GPU) or to wrap in Python and autograd (on a CPU) than to compute. Captured once,
an epoch is one launch of a CUDA graph, or one call of a function that makes the same operator calls
without autograd. The capture holds one epoch, the step of the fast path's `step_on`. A CUDA graph writes
its record (loss, output) into static buffers at an index kept on the device, so that no epoch waits
for the host, and the bulk's records are read out of the buffers afterwards; a tape returns each
replay's record as new tensors. Either way they are the very records the eager loop would have given.

A capture replays what it recorded, not the Python that recorded it: a network whose Python decides
something from its data or its own state, a learning rate that moves, anything that syncs with the
host, would replay something else than its eager epoch, or not capture at all. So replay is tried
only where it can hold (32-bit, full batch, one process, a hand update or torch.optim.SGD, no
scheduler: the fast path's conditions and these), and it is trusted only once it has earned it: the
first epochs replayed are compared with the same epochs run eagerly from the same state. A capture or
replay that raises, or a mismatch, leaves the run training eagerly from the state it would have had
without the attempt, with one `ReplayFallback` warning naming the network. `model.replay = False`
turns replay off.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from typing import Any, Protocol

import lightning as L
import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

from mlnet_lightning.fastpath.tape import OpTape
from mlnet_lightning.internals import has_step_hooks, runs_python_hooks

WARMUP_EPOCHS = 3  # eager epochs before the capture, as CUDA graphs want (lazy initialisations, on a side stream)
CHECKED_EPOCHS = 3  # replayed epochs compared with eager ones before the graph is trusted
# Float tolerance of that comparison for a CUDA graph: it launches the eager epoch's own kernels, so the
# numbers agree to the last bits; a graph that replays something else is off by far more. A graph that is
# `exact` (a tape: the very same CPU kernels) must agree bit for bit, which also catches a learning rate
# kept in Python that moves by 1e-6 an epoch.
RTOL, ATOL = 1e-5, 1e-6
# Epochs of records the static buffers hold (fewer where that passes BUFFER_BYTES); longer bulks are read
# out of them in parts.
CAPACITY = 128
BUFFER_BYTES = 256 * 2**20


class ReplayFallback(UserWarning):
    """Epochs could not be replayed from a captured epoch (or did not replay the eager epoch): the run
    trains eagerly from where it was, with the same numbers, only slower."""


class EpochGraph(Protocol):
    """One epoch, captured once and replayed. A graph that `returns_record` gives each replay's record
    as new tensors (a tape); otherwise the captured step writes it into buffers on the device. One that
    is `exact` is checked against eager epochs bit for bit, else within float tolerance."""

    returns_record: bool
    exact: bool

    def warming_up(self) -> AbstractContextManager: ...

    def capture(self, step: Callable[[], Any]) -> None: ...

    def replay(self) -> Any: ...


class CudaGraph:
    """A CUDA graph of the epoch."""

    returns_record = False  # its outputs live in the graph's memory, overwritten by the next replay
    exact = False

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    @contextmanager
    def warming_up(self) -> Iterator[None]:
        """Eager epochs before the capture run on a side stream, as torch.cuda.graph's documentation asks."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, step: Callable[[], None]) -> None:
        stream = torch.cuda.current_stream()
        try:
            # thread_local: the loggers' writer threads may touch CUDA state meanwhile, which "global" forbids.
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                step()
        finally:
            torch.cuda.set_stream(stream)  # a capture that fails at its end leaves its own stream current

    def replay(self) -> None:
        self.graph.replay()


class EagerGraph:
    """A stand-in that "replays" by running the captured step again: the replay logic on any device,
    which is how its fallbacks are tested with graphs made to fail."""

    warming_up = staticmethod(nullcontext)
    returns_record = exact = False

    def capture(self, step: Callable[[], None]) -> None:
        self.step = step  # a capture records; it does not run

    def replay(self) -> None:
        self.step()


# The graph to capture an epoch in, by device type; epochs replay on these devices only.
GRAPHS: dict[str, Callable[[], EpochGraph]] = {"cuda": CudaGraph, "cpu": OpTape}


def replayed_epochs(
    module: L.LightningModule, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> ReplayedEpochs | None:
    """Where this bulk's epochs may replay from a graph, the fit's replayer (kept with its optimizer);
    else None. The fast path has already checked full batch, one process, no clipping or accumulation."""
    if not (
        getattr(module, "replay", True)
        and x.device.type in GRAPHS
        and module.trainer.precision == "32-true"
        and not module.trainer.lr_scheduler_configs  # a graph holds the learning rate fixed
        and not torch.is_anomaly_enabled()  # Trainer(detect_anomaly=True): autograd checks every backward
        and not runs_python_hooks(module)
        and replayable_step(module, optimizer)
    ):
        return None
    replayer = getattr(optimizer, "_replayed_epochs", None)
    if replayer is None or not (replayer.failed or replayer.fits(module, optimizer, x, y)):
        replayer = ReplayedEpochs(GRAPHS[x.device.type], type(module).__name__)
        optimizer._replayed_epochs = replayer  # one per fit: the fit's optimizer holds it, and frees it with it
    return replayer


def replayable_step(module: L.LightningModule, optimizer: torch.optim.Optimizer) -> bool:
    """Whether a step keeps all it changes in tensors and runs no Python hooks: a network's hand update
    (manual optimization) or torch.optim.SGD (whose learning rate the graph then holds fixed)."""
    if has_step_hooks(optimizer):
        return False
    if module.automatic_optimization:
        return type(optimizer) is torch.optim.SGD
    return callable(getattr(optimizer, "update", None))  # a HandUpdate: the network's own update


class ReplayedEpochs:
    """Trains a fit's bulks of full-batch epochs by replaying one captured epoch.

    The first bulk long enough warms up, captures and checks the graph; later bulks replay it at once.
    Nothing here holds the module or the optimizer: the fit's optimizer holds this."""

    def __init__(self, make_graph: Callable[[], EpochGraph], network: str) -> None:
        self.make_graph, self.network = make_graph, network
        self.graph: EpochGraph | None = None
        self.failed = False
        self.buffers: list[Tensor] = []
        self.single = False  # whether an epoch returns one tensor rather than a tuple of them
        self.names: list[str] = []  # of the step's values, as the epochs return them after its loss
        self.index: Tensor | None = None
        self.captured_for: tuple | None = None
        self.replayed = 0  # epochs whose training came from replays of the graph

    def fits(self, module: L.LightningModule, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> bool:
        """Whether the graph (if any) was captured for these tensors and this step."""
        return self.graph is None or self.captured_for == graph_key(module, optimizer, x, y)

    def train(
        self,
        step: Callable[[], tuple[Tensor, dict[str, Tensor]]],
        module: L.LightningModule,
        optimizer: torch.optim.Optimizer,
        x: Tensor,
        y: Tensor,
        epochs: int,
        stopping: Callable[[], bool],
    ) -> list[tuple[Tensor, dict[str, Tensor]]]:
        """Train up to `epochs` epochs of one `step` each (which returns its loss and named values), stopping
        early when `stopping()` says so (checked before each); returns each epoch's step record."""

        def epoch() -> tuple[Tensor, ...]:
            loss, values = step()
            self.names = list(values)
            return (loss, *values.values())

        records: list = []
        if self.graph is None and not self.failed and epochs > WARMUP_EPOCHS + CHECKED_EPOCHS:
            self._prepare(epoch, module, optimizer, x, y, stopping, records)
        if self.graph is not None:
            start = len(records)
            try:
                self._replay(epochs - start, stopping, records)
            except Exception as error:  # any failure of the graph: the run goes on eagerly
                self._fall_back(f"replaying its epoch failed ({describe(error)})")
            self.replayed += len(records) - start
        train_eagerly(epoch, epochs - len(records), stopping, records)
        return [(loss, dict(zip(self.names, values))) for loss, *values in records]

    def _prepare(self, epoch: Callable[[], Any], module, optimizer, x: Tensor, y: Tensor, stopping, records) -> None:
        """Warm up, capture and check the graph, appending the records of the (eager) epochs this trains;
        the graph is then trusted, or None."""
        graph = self.make_graph()
        with graph.warming_up():
            train_eagerly(epoch, WARMUP_EPOCHS, stopping, records)
        if len(records) < WARMUP_EPOCHS:
            return
        capture = partial(self._capture, graph, epoch, x.device, records[-1])
        before = TrainingState(module, optimizer)
        if self._attempt("capturing its epoch", capture, before):
            before.restore()  # a tape records by training the epoch; the checked epochs start where it started
            records += self._check(epoch, module, optimizer, stopping)
            self.captured_for = graph_key(module, optimizer, x, y)

    def _capture(self, graph: EpochGraph, epoch: Callable[[], Any], device: torch.device, record: Any) -> None:
        """Capture one epoch writing its record at the device-side index (a CUDA capture runs nothing yet),
        or returning it, for a graph that returns records (a tape, which records by running it)."""
        self.single = isinstance(record, Tensor)
        values = [record] if self.single else list(record)
        if not values or not all(isinstance(value, Tensor) for value in values):
            raise TypeError("the step returns something else than tensors")
        if graph.returns_record:
            graph.capture(epoch)
            self.graph = graph
            return
        per_epoch = sum(value.numel() * value.element_size() for value in values)
        capacity = max(1, min(CAPACITY, BUFFER_BYTES // max(per_epoch, 1)))
        self.buffers = [value.new_empty((capacity, *value.shape)) for value in values]
        self.index = torch.zeros(1, dtype=torch.long, device=device)

        def step() -> None:
            record = epoch()
            for buffer, value in zip(self.buffers, [record] if self.single else record):
                buffer.index_copy_(0, self.index, value.unsqueeze(0))
            self.index += 1

        graph.capture(step)
        self.graph = graph

    def _check(self, epoch: Callable[[], Any], module, optimizer, stopping: Callable[[], bool]) -> list:
        """Replay the first epochs, then run them eagerly from the same state, and compare the records and
        the state each leaves. Returns the eager epochs' records (the run goes on from their state); the
        graph is dropped when it failed (then no epoch was trained) or disagreed."""
        before = TrainingState(module, optimizer)
        replayed: list = []
        if not self._attempt("replaying its epoch", partial(self._replay, CHECKED_EPOCHS, stopping, replayed), before):
            return []
        after_replay = TrainingState(module, optimizer)
        before.restore()
        eager = [epoch() for _ in replayed]
        after_eager = TrainingState(module, optimizer)
        difference = largest_difference(
            [*flatten(replayed), *after_replay.values], [*flatten(eager), *after_eager.values], self.graph.exact
        )
        if difference is not None:
            self._fall_back(f"its replayed epochs differ from its eager epochs by up to {difference:.3g}")
        elif len(eager) < CHECKED_EPOCHS:  # stopped early: too few compared to trust it; the next bulk tries again
            self.graph, self.buffers = None, []
        return eager

    def _replay(self, epochs: int, stopping: Callable[[], bool], records: list) -> None:
        """Replay up to `epochs` epochs, appending their records; the buffers are read out each time they fill."""
        if self.graph.returns_record:
            for _ in range(epochs):
                if stopping():
                    break
                records.append(self.graph.replay())
            return
        capacity = len(self.buffers[0])
        filled = 0
        self.index.zero_()
        try:
            for _ in range(epochs):
                if stopping():
                    break
                self.graph.replay()
                filled += 1
                if filled == capacity:
                    records += self._read(filled)
                    filled = 0
                    self.index.zero_()
        finally:
            records += self._read(filled)

    def _read(self, count: int) -> list:
        """The records of the last `count` replays, copied out of the buffers (a bulk's records outlive them)."""
        if count == 0:
            return []
        columns = [buffer[:count].clone().unbind(0) for buffer in self.buffers]
        return list(columns[0]) if self.single else list(zip(*columns))

    def _attempt(self, what: str, action: Callable[[], None], state: TrainingState) -> bool:
        """Run `action`; if it raises, put the training state back as `state` kept it and fall back."""
        try:
            action()
            return True
        except Exception as error:  # a graph that fails, for any reason, is not used
            state.restore()
            self._fall_back(f"{what} failed ({describe(error)})")
            return False

    def _fall_back(self, why: str) -> None:
        self.failed = True
        self.graph, self.buffers = None, []  # free the graph's memory
        warnings.warn(
            f"{self.network}: {why}; it trains without replayed epochs from here on (same numbers, slower)",
            ReplayFallback,
            stacklevel=2,
        )


class TrainingState:
    """What an epoch may change, kept aside to be put back: the module's parameters and buffers, their
    gradients, the optimizer's state and learning rates, the schedulers' state and the CPU's random numbers
    (dropout draws the same ones again). Values are put back in place, where a captured graph reads them."""

    def __init__(
        self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, schedulers: Sequence[LRScheduler] = ()
    ) -> None:
        self.optimizer = optimizer
        self.rates = [group["lr"] for group in optimizer.param_groups]
        self.schedules = [(scheduler, copy.deepcopy(scheduler.state_dict())) for scheduler in schedulers]
        self.random = torch.get_rng_state()
        tensors = [*module.parameters(), *module.buffers()]
        self.grads = [(tensor, tensor.grad) for tensor in tensors]
        self.optimizer_state = {key: dict(entry) for key, entry in optimizer.state.items()}
        grads = [grad for _, grad in self.grads if grad is not None]
        held = held_tensors(self.optimizer_state)
        self.tensors = [*tensors, *grads, *held]
        self.values = [tensor.detach().clone() for tensor in self.tensors]

    @torch.no_grad()
    def restore(self) -> None:
        torch.set_rng_state(self.random)
        for group, rate in zip(self.optimizer.param_groups, self.rates):
            group["lr"] = rate
        for scheduler, state in self.schedules:
            scheduler.load_state_dict(state)
        for tensor, grad in self.grads:
            tensor.grad = grad
        self.optimizer.state.clear()
        self.optimizer.state.update({key: dict(entry) for key, entry in self.optimizer_state.items()})
        for tensor, value in zip(self.tensors, self.values):
            tensor.copy_(value)


def held_tensors(optimizer_state: dict) -> list[Tensor]:
    """The tensors an optimizer's state holds (momentum buffers, step counts)."""
    return [value for entry in optimizer_state.values() for value in entry.values() if isinstance(value, Tensor)]


def graph_key(module: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> tuple:
    """What a captured graph depends on beyond the tensors' values: their memory, whether gradients
    exist, the optimizer's state tensors, which tensors are trained, the modules' training modes and the
    optimizer's settings (a learning rate set, momentum reset, a layer frozen or put in eval mode between
    bulks needs a new capture)."""
    tensors = [*module.parameters(), *module.buffers()]
    settings = [sorted((k, repr(v)) for k, v in group.items() if k != "params") for group in optimizer.param_groups]
    return (
        x.data_ptr(),
        y.data_ptr(),
        tuple(t.data_ptr() for t in tensors),
        tuple(None if t.grad is None else t.grad.data_ptr() for t in tensors),
        tuple(t.data_ptr() for t in held_tensors(optimizer.state)),
        tuple(t.requires_grad for t in tensors),
        tuple(m.training for m in module.modules()),
        repr(settings),
    )


def train_eagerly(epoch: Callable[[], Any], count: int, stopping: Callable[[], bool], records: list) -> None:
    """Up to `count` epochs, appending their records, as the fast path's own loop."""
    for _ in range(count):
        if stopping():
            return
        records.append(epoch())


def flatten(records: list) -> list[Tensor]:
    return [value for record in records for value in ([record] if isinstance(record, Tensor) else record)]


def largest_difference(replayed: Sequence[Tensor], eager: Sequence[Tensor], exact: bool = False) -> float | None:
    """None where the two lists of tensors agree (NaN matching NaN) within float tolerance, or exactly, else
    their largest difference (inf for different shapes or counts)."""
    rtol, atol = (0.0, 0.0) if exact else (RTOL, ATOL)
    if len(replayed) != len(eager):
        return math.inf
    worst = None
    for a, b in zip(replayed, eager):
        if a.shape != b.shape or a.dtype != b.dtype:
            return math.inf
        if not torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
            gap = (a.double() - b.double()).abs().nan_to_num(math.inf).max().item()
            worst = gap if worst is None else max(worst, gap)
    return worst


def describe(error: Exception) -> str:
    """An exception in one short line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
