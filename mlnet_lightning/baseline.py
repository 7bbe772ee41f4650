"""Plain PyTorch loops of the tutorial, written independently of the Lightning modules.

They are the yardstick: tests check that the Trainer path follows the same trajectory, and
`scripts/benchmark.py` times the Trainer path against them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlnet_lightning.data import TensorBatches


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run the tutorial's small batches on one CPU thread, as the Trainer path does (data.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class PlainRun:
    losses: list[float] = field(default_factory=list)
    train_accs: list[float] = field(default_factory=list)
    val_acc: float = float("nan")
    seconds: float = 0.0


def tutorial_network(name: str, logits: bool = False, seed: int = 0) -> tuple[nn.Module, str]:
    """The tutorial's 2-2-4 network for a section, and how it is updated ("sgd" or "by hand")."""
    torch.manual_seed(seed)
    if name in ("scratch", "functional", "parameter"):
        net = HandNetwork(logits)
        return net, "by hand"
    net = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 4))
    if not logits:
        net.append(nn.Softmax(dim=-1))
    return net, "sgd"


class HandNetwork(nn.Module):
    def __init__(self, logits: bool) -> None:
        super().__init__()
        self.logits = logits
        self.w1 = nn.Parameter(torch.randn(2, 2) / math.sqrt(2))
        self.b1 = nn.Parameter(torch.zeros(2))
        self.w2 = nn.Parameter(torch.randn(2, 4) / math.sqrt(2))
        self.b2 = nn.Parameter(torch.zeros(4))

    def forward(self, x: Tensor) -> Tensor:
        a2 = (x @ self.w1 + self.b1).sigmoid() @ self.w2 + self.b2
        return a2 if self.logits else a2.exp() / a2.exp().sum(-1, keepdim=True)


def hand_cross_entropy(probabilities: Tensor, y: Tensor) -> Tensor:
    return -probabilities[torch.arange(len(y)), y].log().mean()


def fit_tutorial(
    name: str,
    x: Tensor,
    y: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    epochs: int,
    lr: float = 0.2,
    logits: bool = False,
    seed: int = 0,
    record: bool = True,
) -> PlainRun:
    """The tutorial's own loop for one section, recording loss and accuracy every epoch (or, without
    `record`, only the last epoch's loss)."""
    net, update = tutorial_network(name, logits, seed)
    if name == "scratch":
        loss_fn = (lambda out, t: hand_cross_entropy(out.softmax(-1), t)) if logits else hand_cross_entropy
    else:
        loss_fn = F.cross_entropy
    optimizer = torch.optim.SGD(net.parameters(), lr=lr) if update == "sgd" else None
    return fit_plain(net, loss_fn, optimizer, x, y, x_val, y_val, epochs, lr=lr, record=record)


def fit_plain(
    net: nn.Module,
    loss_fn,
    optimizer: torch.optim.Optimizer | None,
    x: Tensor,
    y: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    epochs: int,
    lr: float = 0.2,
    batch_size: int | None = None,
    seed: int = 0,
    record: bool = True,
) -> PlainRun:
    """A plain loop: without an optimizer, parameters step by hand (p -= lr * grad). `record` keeps each
    epoch's loss and accuracy (a host sync each); without it, only the last batch's loss."""
    run = PlainRun()
    epoch = 0
    batches = TensorBatches(x, y, batch_size, seed, lambda: epoch)  # only for its shuffled batch order
    start = time.perf_counter()
    for epoch in range(epochs):  # noqa: B007 (read by `batches`)
        correct, total_loss = 0, 0.0
        for xb, yb in batches:
            output = net(xb)
            loss = loss_fn(output, yb)
            loss.backward()
            if record:
                total_loss += loss.item() * len(yb)
                correct += (output.argmax(1) == yb).sum().item()
            if optimizer is None:
                with torch.no_grad():
                    for param in net.parameters():
                        param -= param.grad * lr
                net.zero_grad()
            else:
                optimizer.step()
                optimizer.zero_grad()
        if record:
            run.losses.append(total_loss / len(y))
            run.train_accs.append(correct / len(y))
    if not record:
        run.losses.append(loss.item())
    with torch.no_grad():  # the last validation belongs to the run, as in the Trainer (.item() waits for a GPU)
        run.val_acc = (net(x_val).argmax(1) == y_val).float().mean().item()
    run.seconds = time.perf_counter() - start
    return run
