"""Time one epoch of each network eagerly and replayed from the CPU's tape (mlnet_lightning/fastpath/tape.py).

    python scripts/benchmark_replay.py            # about 30 seconds on one CPU thread

Each network trains a few epochs, then its epoch is recorded and replayed from the same state as eager epochs;
the parameters after each must be bitwise equal (checked), then both are timed alternately, 3 times.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from mlnet_lightning.data import BlobData
from mlnet_lightning.fastpath.bulk import step_on
from mlnet_lightning.fastpath.tape import OpTape
from mlnet_lightning.fastpath.updates import plain_update
from mlnet_lightning.models import MODELS


def microseconds(run, epochs: int) -> float:
    start = time.perf_counter()
    for _ in range(epochs):
        run()
    return (time.perf_counter() - start) / epochs * 1e6


def tensors_of_a_step(model, x, y, update) -> tuple[torch.Tensor, ...]:
    """A training step as the replayer captures it: its loss, then its values."""
    loss, values = step_on(model, x, y, update)
    return (loss, *values.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2000, help="epochs timed per trial (default 2000)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the Trainer path runs these small batches
    data = BlobData()
    x, y = data.x_train, data.y_train
    print(f"{'network':<12} {'eager_us':>9} {'replayed_us':>12} {'ratio':>6}   (best of 3)")
    for name, network in MODELS.items():
        model = network()
        update = plain_update(model, model.configure_optimizers())
        epoch = partial(tensors_of_a_step, model, x, y, update)
        for _ in range(3):  # the state a capture sees in a fit: gradients made, optimizer state set
            epoch()
        tensors = [*model.parameters(), *model.buffers()]
        start = [tensor.detach().clone() for tensor in tensors]
        tape = OpTape()
        tape.capture(epoch)
        ends = []
        for run in (epoch, tape.replay):
            with torch.no_grad():
                for tensor, value in zip(tensors, start):
                    tensor.copy_(value)
            for _ in range(20):
                run()
            ends.append([tensor.detach().clone() for tensor in tensors])
        assert all(torch.equal(a, b) for a, b in zip(*ends)), f"{name}: replayed epochs differ from eager ones"
        eager, replayed = [], []
        for _ in range(3):
            eager.append(microseconds(epoch, args.epochs))
            replayed.append(microseconds(tape.replay, args.epochs))
        print(f"{name:<12} {min(eager):>9.0f} {min(replayed):>12.0f} {min(replayed) / min(eager):>6.2f}")


if __name__ == "__main__":
    main()
