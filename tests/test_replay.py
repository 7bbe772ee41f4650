"""Epochs replayed from a captured graph. The replay logic is tested with a stand-in graph that replays by
running the captured step again (mlnet_lightning.fastpath.replay.EagerGraph): the replayed path follows the plain
loop, and every way a graph can fail (capture, a replay that trains something else, a replay that raises)
leaves the run with exactly the numbers of a run without replay, and one warning. Then the CPU's own capture,
the tape (mlnet_lightning.fastpath.tape): bit for bit, what it refuses, when it captures again."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
import weakref
from functools import partial
from itertools import count

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from mlnet_lightning.baseline import fit_tutorial
from mlnet_lightning.data import BlobData
from mlnet_lightning.fastpath import replay
from mlnet_lightning.fastpath.bulk import step_on
from mlnet_lightning.fastpath.replay import CHECKED_EPOCHS, WARMUP_EPOCHS, EagerGraph, ReplayedEpochs, ReplayFallback
from mlnet_lightning.fastpath.tape import OpTape
from mlnet_lightning.fastpath.updates import descend
from mlnet_lightning.models import MODELS, TUTORIAL_MODELS, Scratch, Sequential
from mlnet_lightning.seeds import StackedCopies
from tests.conftest import ONE_THREAD_ENV, ROOT

EPOCHS = 300  # three bulks of 99 epochs, each followed by a validation epoch that Lightning runs itself
REPLAYED = EPOCHS - 3 - WARMUP_EPOCHS - CHECKED_EPOCHS  # the rest of the bulks' epochs replay


class Points(Logger):
    """Keeps every logged point: what a TensorBoard or CSV logger would write."""

    name, version = "points", 0

    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[int, str, float]] = []

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.points += [(step, name, float(value)) for name, value in sorted(metrics.items())]

    def series(self, name: str) -> list[float]:
        return [value for _, key, value in self.points if key == name]


def fit(
    model: L.LightningModule,
    replayed: bool = True,
    epochs: int = EPOCHS,
    accelerator: str = "cpu",
    data: BlobData | None = None,
    **trainer_options,
) -> tuple[L.LightningModule, L.Trainer, Points]:
    """Fit as a user would, validating every 100 epochs; the replay on or off."""
    model.replay = replayed
    logger = Points()
    trainer = L.Trainer(
        max_epochs=epochs,
        check_val_every_n_epoch=100,
        accelerator=accelerator,
        devices=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_options,
    )
    trainer.fit(model, datamodule=data or BlobData())
    return model, trainer, logger


def replayer_of(trainer: L.Trainer) -> ReplayedEpochs | None:
    return getattr(trainer.optimizers[0], "_replayed_epochs", None)


def assert_same_fit(a: tuple, b: tuple, atol: float = 0.0) -> None:
    """Same parameters, logged points and counters (exactly, unless atol)."""
    (model_a, trainer_a, logger_a), (model_b, trainer_b, logger_b) = a, b
    assert (trainer_a.current_epoch, trainer_a.global_step) == (trainer_b.current_epoch, trainer_b.global_step)
    for (name, value), expected in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(value.cpu(), expected.cpu(), rtol=0, atol=atol, msg=name)
    assert [(step, name) for step, name, _ in logger_a.points] == [(step, name) for step, name, _ in logger_b.points]
    assert [v for *_, v in logger_a.points] == pytest.approx([v for *_, v in logger_b.points], rel=0, abs=atol)


def fallback_warnings(caught: list) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ReplayFallback)]


class CountingGraph(EagerGraph):
    def __init__(self) -> None:
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        super().replay()


class FailingCapture(EagerGraph):
    """A capture that gets through the epoch's Python, changing what it ran, and then fails, as a CUDA
    capture does at a host sync (`.item()`, a data-dependent shape)."""

    def capture(self, step) -> None:
        step()
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\n(the rest of it)")


class TwoEpochGraph(EagerGraph):
    """A graph that replays something else than the eager epoch: here, two epochs at once."""

    def replay(self) -> None:
        self.step()
        self.step()


class BreakingGraph(EagerGraph):
    """A graph whose 150th replay raises (in the second bulk, long after it was checked and trusted)."""

    def __init__(self) -> None:
        self.replays = count(1)

    def replay(self) -> None:
        if next(self.replays) == 150:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        self.step()


def stand_in(monkeypatch, graph=CountingGraph) -> None:
    """Let epochs replay on the CPU, from `graph`."""
    monkeypatch.setitem(replay.GRAPHS, "cpu", graph)


@pytest.mark.parametrize("name", ["scratch", "parameter", "sequential"])
def test_replayed_epochs_follow_the_plain_loop(monkeypatch, name):
    stand_in(monkeypatch)
    data = BlobData()
    plain = fit_tutorial(name, data.x_train, data.y_train, data.x_val, data.y_val, epochs=EPOCHS)
    _, trainer, logger = fit(TUTORIAL_MODELS[name](), data=data)
    replayer = replayer_of(trainer)
    assert replayer.replayed == REPLAYED and replayer.graph.replays == REPLAYED + CHECKED_EPOCHS
    assert not replayer.failed
    assert trainer.current_epoch == trainer.global_step == EPOCHS
    assert logger.series("train/loss") == pytest.approx(plain.losses, abs=1e-6)
    assert logger.series("train/acc") == pytest.approx(plain.train_accs, abs=1e-6)
    assert logger.series("val/acc")[-1] == pytest.approx(plain.val_acc, abs=1e-6)


def stacked_copies() -> StackedCopies:
    return StackedCopies(Sequential, seeds=range(3), lrs=[0.1, 0.2], num_features=2, num_classes=4)


def replayed_epochs_of(network) -> int:
    """The epochs a fit of `network` replays: stacked copies train epoch 0 in Lightning's loop, whose train/loss
    is each copy's initial loss (seeds.InitialLosses)."""
    return REPLAYED - 1 if network is stacked_copies else REPLAYED


def sgd_with_momentum() -> Sequential:
    return Sequential(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}})


@pytest.mark.parametrize(
    "network",
    [MODELS["functional"], MODELS["linear"], MODELS["mlp"], partial(Sequential, logits=True), stacked_copies,
     sgd_with_momentum],
    ids=["functional", "linear", "mlp", "logits", "seeds", "momentum"],
)  # fmt: skip
def test_replayed_fit_equals_eager_fit(monkeypatch, network):
    stand_in(monkeypatch)
    replayed = fit(network())
    assert replayer_of(replayed[1]).replayed == replayed_epochs_of(network)
    assert_same_fit(replayed, fit(network(), replayed=False))


@pytest.mark.parametrize(
    ("graph", "name", "why"),
    [
        (FailingCapture, "scratch", "capturing its epoch failed (RuntimeError: CUDA error: operation not permitted"),
        (FailingCapture, "sequential", "capturing its epoch failed"),
        (TwoEpochGraph, "parameter", "its replayed epochs differ from its eager epochs by up to"),
        (TwoEpochGraph, "linear", "its replayed epochs differ from its eager epochs by up to"),
        (BreakingGraph, "functional", "replaying its epoch failed (RuntimeError: CUDA error: an illegal memory"),
        (BreakingGraph, "sequential", "replaying its epoch failed"),
    ],
)
def test_a_graph_that_fails_leaves_the_numbers_of_an_eager_run(monkeypatch, graph, name, why):
    stand_in(monkeypatch, graph)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replayed = fit(TUTORIAL_MODELS[name]())
    messages = fallback_warnings(caught)
    assert len(messages) == 1 and "\n" not in messages[0]
    assert messages[0].startswith(f"{TUTORIAL_MODELS[name].__name__}: {why}")
    replayer = replayer_of(replayed[1])
    assert replayer.failed and replayer.graph is None
    assert replayer.replayed == (149 - CHECKED_EPOCHS if graph is BreakingGraph else 0)
    assert_same_fit(replayed, fit(TUTORIAL_MODELS[name](), replayed=False))


STEP_LR = "torch.optim.lr_scheduler.StepLR"


@pytest.mark.parametrize(
    ("network", "options"),
    [
        (partial(Sequential, lr_scheduler={"class_path": STEP_LR, "init_args": {"step_size": 10}}), {}),
        (partial(Sequential, optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}), {}),
        (Sequential, {"precision": "64-true"}),
        (Sequential, {"replayed": False}),
    ],
    ids=["scheduler", "adam", "64-bit", "switched off"],
)
def test_epochs_replay_only_where_a_graph_can_hold(monkeypatch, network, options):
    stand_in(monkeypatch)
    model, trainer, logger = fit(network(), epochs=120, **options)
    assert replayer_of(trainer) is None
    assert trainer.global_step == 120 and len(logger.series("train/loss")) == 120


def test_mini_batches_train_eagerly(monkeypatch):
    stand_in(monkeypatch)
    _, trainer, _ = fit(Sequential(), epochs=5, data=BlobData(batch_size=100))
    assert replayer_of(trainer) is None and trainer.global_step == 5 * 8


@pytest.mark.parametrize("graph", [EagerGraph, OpTape])
@pytest.mark.parametrize("stop_after", [2, WARMUP_EPOCHS + 1, 50])
def test_a_bulk_stops_where_asked_and_reads_its_records_in_parts(monkeypatch, stop_after, graph):
    """Stopped in the warm-up, in the check (too few epochs compared: the next bulk captures anew) or in the
    replays (records read out of 16-epoch buffers, or returned by a tape); then a second bulk: the same
    epochs as the eager loop."""
    monkeypatch.setattr(replay, "CAPACITY", 16)
    data = BlobData()
    x, y = data.x_train, data.y_train
    models = [Sequential(), Sequential()]
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.2) for model in models]
    updates = [partial(descend, optimizer) for optimizer in optimizers]
    replayer = ReplayedEpochs(graph, "Sequential")
    calls = count()
    step = partial(step_on, models[0], x, y, updates[0])
    records = replayer.train(step, models[0], optimizers[0], x, y, 100, lambda: next(calls) >= stop_after)
    assert len(records) == stop_after
    assert (replayer.graph is None) == (stop_after <= WARMUP_EPOCHS + 1) and not replayer.failed
    records += replayer.train(step, models[0], optimizers[0], x, y, 40, lambda: False)
    eager = [step_on(models[1], x, y, updates[1]) for _ in range(stop_after + 40)]
    assert replayer.replayed > 0
    for (loss, values), (eager_loss, eager_values) in zip(records, eager, strict=True):
        assert torch.equal(loss, eager_loss) and values.keys() == eager_values.keys() == {"train/loss", "train/acc"}
        assert all(torch.equal(values[name], eager_values[name]) for name in values)
    for param, eager_param in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(param, eager_param)


# ---- The CPU's own capture: a tape of the epoch's operations (mlnet_lightning.fastpath.tape), no stand-in ----


class Syncing(Sequential):
    """Data-dependent Python in forward: a GPU capture cannot wait for the value, a tape cannot hold the decision."""

    fast_path = True  # opts in: the fast path's own checks are under test

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = super().forward(x)
        if output.isnan().any():
            raise ArithmeticError("NaN output")
        return output


class Alternating(Sequential):
    """Python state in forward: a capture replays the branch it took, every epoch."""

    fast_path = True  # opts in: the fast path's own checks are under test

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x) * (1.0 if self.calls % 2 else 0.5)


class Masked(Sequential):
    """A boolean mask: the shape of what it selects follows the data."""

    fast_path = True  # opts in: the fast path's own checks are under test

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kept = target >= 0
        return super().loss(output[kept], target[kept])


class Dropping(Sequential):
    """Random numbers every epoch: a replayed epoch draws the eager epoch's."""

    fast_path = True  # opts in: the fast path's own checks are under test

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.nn.functional.dropout(x, p=0.3, training=self.training))


@pytest.mark.parametrize(
    "network",
    [*MODELS.values(), partial(Sequential, logits=True), stacked_copies, sgd_with_momentum, Dropping],
    ids=[*MODELS, "logits", "seeds", "momentum", "dropout"],
)
def test_the_tape_replays_every_network_bit_for_bit(network):
    torch.manual_seed(7)
    replayed = fit(network())
    replayer = replayer_of(replayed[1])
    assert isinstance(replayer.graph, OpTape) and not replayer.failed
    assert replayer.replayed == replayed_epochs_of(network)
    torch.manual_seed(7)
    assert_same_fit(replayed, fit(network(), replayed=False))


@pytest.mark.parametrize(
    ("network", "why"),
    [
        (Syncing, "capturing its epoch failed (NotReplayable: its epoch reads a value back to Python (aten."),
        (Masked, "capturing its epoch failed (NotReplayable: its epoch calls aten.index.Tensor, whose output's shape"),
    ],
)
def test_the_tape_refuses_an_epoch_whose_python_follows_the_data(network, why):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replayed = fit(network())
    messages = fallback_warnings(caught)
    assert len(messages) == 1 and messages[0].startswith(f"{network.__name__}: {why}"), messages
    assert replayer_of(replayed[1]).failed and replayer_of(replayed[1]).replayed == 0
    assert_same_fit(replayed, fit(network(), replayed=False))


def test_a_tape_that_replays_something_else_is_not_trusted():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, trainer, logger = fit(Alternating())
    messages = fallback_warnings(caught)
    assert len(messages) == 1 and messages[0].startswith("Alternating: its replayed epochs differ")
    assert replayer_of(trainer).failed and replayer_of(trainer).replayed == 0
    # Every epoch trained ran its Python (none replayed); beside them, the capture and three validations.
    assert model.calls == trainer.global_step + 1 + 3


def test_a_tape_keeps_no_tensor_of_the_epoch_alive():
    """Recording holds only what the epoch did not make (a full batch's activations are gigabytes), and the
    replayed function frees each tensor it makes after its last use."""
    weights = torch.randn(4, 4, requires_grad=True)
    made: list[weakref.ref] = []

    def step() -> None:
        hidden = torch.randn(64, 4)
        for _ in range(5):
            hidden = (hidden @ weights).tanh()
            made.append(weakref.ref(hidden))
        hidden.sum().backward()  # frees what autograd saved
        with torch.no_grad():
            weights.sub_(weights.grad * 0.1)
            weights.grad = None
        still_alive.extend(ref() is not None for ref in made[:-1])  # all but `hidden` itself

    still_alive: list[bool] = []
    tape = OpTape()
    tape.capture(step)
    assert still_alive == [False] * 4
    before = weights.detach().clone()
    tape.replay()
    assert not torch.equal(weights, before)  # it trains
    lines = tape.source.splitlines()
    assigned = {name for line in lines if " = " in line for name in re.findall(r"t\d+_\d+", line.split(" = ")[0])}
    deleted = {name for line in lines if line.strip().startswith("del ") for name in re.findall(r"t\d+_\d+", line)}
    assert assigned and assigned == deleted


def test_the_replay_benchmark_checks_and_times_every_network():
    """scripts/benchmark_replay.py, as docs/benchmarks.md runs it (fewer epochs): it asserts each network's
    replayed epochs bitwise equal to eager ones before timing them."""
    command = [sys.executable, str(ROOT / "scripts" / "benchmark_replay.py"), "--epochs", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ONE_THREAD_ENV)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == list(MODELS)
    assert all(float(eager) > 0 and float(replayed) > 0 for _, eager, replayed, _ in rows)


class FreezeFirstLayer(Callback):
    """At the end of epoch 149, freezes the first layer and puts the network in eval mode (what a user's
    fine-tuning callback may do); it says when it looks, so the fast path trains the other epochs."""

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int | None:
        return 149 if epoch <= 149 else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 149:
            pl_module.net[0].requires_grad_(False)
            pl_module.net.eval()


def test_a_layer_frozen_between_bulks_is_captured_again():
    torch.manual_seed(7)
    replayed = fit(Dropping(), callbacks=[FreezeFirstLayer()])
    replayer = replayer_of(replayed[1])
    assert not replayer.failed and replayer.replayed > 100  # the fit's second capture, after the freeze
    torch.manual_seed(7)
    assert_same_fit(replayed, fit(Dropping(), replayed=False, callbacks=[FreezeFirstLayer()]))


def count_forward_calls(model: Sequential) -> list[int]:
    calls: list[int] = []
    model.net[0].register_forward_hook(lambda *args: calls.append(1))
    return calls


def count_gradients(model: Sequential) -> list[int]:
    calls: list[int] = []
    model.net[0].weight.register_hook(lambda grad: calls.append(1))
    return calls


@pytest.mark.parametrize(("watch", "calls_per_fit"), [(count_forward_calls, EPOCHS + 3), (count_gradients, EPOCHS)])
def test_python_hooks_see_every_epoch(watch, calls_per_fit):
    """A replay runs no Python: a module or tensor hook keeps every epoch eager (the forward hook also sees
    the three validations)."""
    model = Sequential()
    calls = watch(model)
    _, trainer, _ = fit(model)
    assert replayer_of(trainer) is None and len(calls) == calls_per_fit


def test_anomaly_detection_checks_every_backward():
    replayed = fit(Sequential(), detect_anomaly=True)
    assert replayer_of(replayed[1]) is None
    assert_same_fit(replayed, fit(Sequential(), replayed=False))


class Decaying(Scratch):
    """A learning rate kept in Python and decayed in the hand update: a replay holds the captured one."""

    fast_path = True  # opts in: the fast path's own checks are under test

    steps = 0

    def update(self) -> None:
        self.steps += 1
        self.hparams.lr = 0.2 * 0.999999**self.steps
        super().update()


def test_a_tape_must_equal_eager_epochs_bit_for_bit():
    """A learning rate 0.0003 smaller after three epochs moves the parameters by less than a float tolerance
    would notice; the tape, running the very same kernels, is held to exact equality."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replayed = fit(Decaying())
    messages = fallback_warnings(caught)
    assert len(messages) == 1 and messages[0].startswith("Decaying: its replayed epochs differ"), messages
    assert replayer_of(replayed[1]).failed and replayer_of(replayed[1]).replayed == 0


class ResetMomentum(Callback):
    """At the end of epoch 149, forgets the optimizer's momentum (SGD then starts a new buffer)."""

    def next_observed_epoch(self, trainer: L.Trainer, epoch: int) -> int | None:
        return 149 if epoch <= 149 else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 149:
            trainer.optimizers[0].state.clear()


def test_an_optimizer_state_reset_between_bulks_is_captured_again():
    replayed = fit(sgd_with_momentum(), callbacks=[ResetMomentum()])
    assert not replayer_of(replayed[1]).failed and replayer_of(replayed[1]).replayed > 100
    assert_same_fit(replayed, fit(sgd_with_momentum(), replayed=False, callbacks=[ResetMomentum()]))
