"""Time the Trainer path against a plain PyTorch loop, side by side in one process.

    python scripts/benchmark.py --accelerator cpu      # about 5 minutes on 2 cores
    python scripts/benchmark.py --accelerator gpu      # about 2 minutes on one H100

Each case runs the plain loop and the Trainer path (the main command's own code, with its default
logging, progress bar and checkpoints) on the same device, and reports their ratio. One more case fits
`Sequential()` as a Lightning user would from Python (their Trainer, default logger and progress bar).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlnet_lightning.baseline import fit_plain, fit_tutorial, one_cpu_thread
from mlnet_lightning.cli import _quiet_lightning, build_parser
from mlnet_lightning.data import BlobData, TensorBatches
from mlnet_lightning.models import TUTORIAL_MODELS, Sequential, TutorialModule
from mlnet_lightning.runs import train_one

ROOT = Path(__file__).resolve().parents[1]


class Wide(TutorialModule):
    """The larger problem's network: 2-256-256-4, logits."""

    fast_path = True  # every epoch computes the same: a network of one's own says so (docs/extending.md)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        torch.manual_seed(self.hparams.seed)
        self.net = wide_network()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def wide_network() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))


def trainer_run(model_class, name: str, accelerator: str, root: str, data: BlobData, epochs: int, *options: str):
    """The main command's path for one network; returns (wall seconds, summary)."""
    parser = build_parser()
    # Pictures off: their cost has its own budget and measurement (docs/benchmarks.md, "Pictures").
    command = ["--model", name, "--accelerator", accelerator, "--default_root_dir", root, "--pictures", "false"]
    config = parser.parse_args([*command, "--max_epochs", str(epochs), *options])
    start = time.perf_counter()
    summary = train_one(name, model_class, config, parser, data=data)
    return time.perf_counter() - start, summary


def on_device(data: BlobData, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device) for t in (data.x_train, data.y_train, data.x_val, data.y_val))


def tutorial_case(name: str, accelerator: str, device: torch.device, root: str, repeats: int) -> dict:
    plain_times, trainer_times = [], []
    for _ in range(repeats):  # alternate, so that a noisy moment hits both sides alike
        with one_cpu_thread():  # as the Trainer path runs these small batches (data.py)
            plain = fit_tutorial(name, *on_device(BlobData(), device), epochs=10_000)
        plain_times.append(plain.seconds)
        seconds, summary = trainer_run(TUTORIAL_MODELS[name], name, accelerator, root, BlobData(), 10_000)
        trainer_times.append(seconds)
    return row(f"{name} 10k epochs", summary, 10_000, plain_times, trainer_times, plain.losses[-1])


def python_api_case(repeats: int) -> dict:
    """`Sequential()` fitted as a Lightning user writes it (their Trainer, default logger and progress bar)
    against the plain loop that records nothing; both on one CPU thread."""
    plain_times, trainer_times = [], []
    for _ in range(repeats):  # alternate, so that a noisy moment hits both sides alike
        data = BlobData()
        with one_cpu_thread():
            plain = fit_tutorial("sequential", data.x_train, data.y_train, data.x_val, data.y_val, 10_000, record=False)
        plain_times.append(plain.seconds)
        with tempfile.TemporaryDirectory() as root, one_cpu_thread():
            checkpoints = ModelCheckpoint(every_n_epochs=1000, save_last=True)
            trainer = L.Trainer(
                max_epochs=10_000, check_val_every_n_epoch=100, callbacks=[checkpoints], default_root_dir=root
            )
            model = Sequential()
            start = time.perf_counter()
            trainer.fit(model, BlobData())
            trainer_times.append(time.perf_counter() - start)
    assert trainer.current_epoch == 10_000, trainer.current_epoch
    summary = {"device": "cpu", "final_loss": float(trainer.callback_metrics["train/loss"])}
    return row("Python API: Trainer(...).fit(Sequential(), BlobData()), 10k epochs vs plain loop recording nothing",
               summary, 10_000, plain_times, trainer_times, plain.losses[-1])  # fmt: skip


class LightningOnly(L.LightningModule):
    """The tutorial's nn.Sequential as a Lightning user writes it without the project: what Lightning's own
    loop costs for a DataLoader."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self.net(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def sequential() -> Sequential:
    """Sequential(logits=True) in Lightning's own loop: a DataLoader of one's own has no fast path anyway."""
    model = Sequential(logits=True)
    model.fast_path = False
    return model


def dataloader_cases(repeats: int) -> list[dict]:
    """`Sequential(logits=True)`, 1,000 epochs through a user's Trainer (defaults on), fed by a DataLoader of
    one's own over the training tensors (and the same network without the project, for Lightning's own cost
    of that DataLoader), by BlobData with the fast path off, and by the tensors as TensorBatches, each
    against the plain loop recording nothing; the process's threads as Python leaves them (two here)."""
    data = BlobData()
    own = {
        "train_dataloaders": DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=750),
        "val_dataloaders": DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=250),
    }
    fits = {  # what makes the module, and what it is fitted on
        "Sequential(logits=True) on your DataLoader(TensorDataset, batch_size=750)": (sequential, own),
        "the same network as a LightningModule without the project, same DataLoader": (LightningOnly, own),
        "Sequential(logits=True) on BlobData(), fast path off (Lightning's own loop)": (
            sequential,
            {"datamodule": data},
        ),
        "Sequential(logits=True) on your tensors as TensorBatches(x, y), the fast path on": (
            lambda: Sequential(logits=True),
            {
                "train_dataloaders": TensorBatches(data.x_train, data.y_train),
                "val_dataloaders": TensorBatches(data.x_val, data.y_val),
            },
        ),
    }
    times: dict[str, list[float]] = {label: [] for label in fits}
    summaries: dict[str, dict] = {}
    plain_times = []
    for _ in range(repeats):
        with one_cpu_thread():
            plain = fit_tutorial(
                "sequential", data.x_train, data.y_train, data.x_val, data.y_val, 1000, logits=True, record=False
            )
        plain_times.append(plain.seconds)
        for label, (network, loaders) in fits.items():
            with tempfile.TemporaryDirectory() as root:
                model = network()
                trainer = L.Trainer(max_epochs=1000, check_val_every_n_epoch=100, default_root_dir=root)
                start = time.perf_counter()
                trainer.fit(model, **loaders)
                times[label].append(time.perf_counter() - start)
                summaries[label] = {"device": "cpu", "final_loss": float(trainer.callback_metrics["train/loss"])}
    return [
        row(
            f"Python API: {label}, 1k epochs vs plain loop",
            summaries[label],
            1000,
            plain_times,
            seconds,
            plain.losses[-1],
        )  # fmt: skip
        for label, seconds in times.items()
    ]


def mini_batch_case(repeats: int) -> dict:
    """`Sequential(logits=True)` on `BlobData(batch_size=75)` (10 shuffled batches an epoch), 1,000 epochs
    through a user's Trainer (defaults on), against a plain loop over the same batches recording nothing;
    both on one CPU thread (the Trainer path chooses one for batches this small)."""
    plain_times, trainer_times = [], []
    for _ in range(repeats):  # alternate, so that a noisy moment hits both sides alike
        data = BlobData(batch_size=75)
        net = Sequential(logits=True)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
        with one_cpu_thread():
            plain = fit_plain(net, F.cross_entropy, optimizer, *on_device(data, torch.device("cpu")), 1000,
                              batch_size=75, record=False)  # fmt: skip
        plain_times.append(plain.seconds)
        with tempfile.TemporaryDirectory() as root:
            trainer = L.Trainer(max_epochs=1000, check_val_every_n_epoch=100, default_root_dir=root)
            start = time.perf_counter()
            trainer.fit(Sequential(logits=True), BlobData(batch_size=75))
            trainer_times.append(time.perf_counter() - start)
    assert trainer.current_epoch == 1000 and trainer.global_step == 10_000, trainer.global_step
    summary = {"device": "cpu", "final_loss": float(trainer.callback_metrics["train/loss"])}
    return row("Python API: Sequential(logits=True) on BlobData(batch_size=75), 1k epochs vs plain mini-batch loop",
               summary, 1000, plain_times, trainer_times, plain.losses[-1])  # fmt: skip


def five_plain_loops() -> float:
    """The tutorial's five plain loops one after the other in one process, recording every epoch (seconds)."""
    data = BlobData()
    with one_cpu_thread():
        runs = [
            fit_tutorial(name, data.x_train, data.y_train, data.x_val, data.y_val, 10_000) for name in TUTORIAL_MODELS
        ]
    return sum(run.seconds for run in runs)


def large_case(
    batch_size: int | None, epochs: int, accelerator: str, device: torch.device, root: str, repeats: int
) -> dict:
    data = BlobData(n_samples=1_000_000, batch_size=batch_size)
    # One validation, at the end, as the plain loop's (the default would validate after every one of so few epochs).
    at_the_end = ("--check_val_every_n_epoch", str(epochs))
    plain_times, trainer_times = [], []
    for _ in range(repeats):  # alternate, so that a noisy moment hits both sides alike
        torch.manual_seed(0)
        net = wide_network().to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
        plain = fit_plain(net, F.cross_entropy, optimizer, *on_device(data, device), epochs, batch_size=batch_size)
        plain_times.append(plain.seconds)
        seconds, summary = trainer_run(Wide, "wide", accelerator, root, data, epochs, *at_the_end)
        trainer_times.append(seconds)
    label = f"2-256-256-4, 1M points, {'full batch' if batch_size is None else f'batch {batch_size}'}"
    return row(label, summary, epochs, plain_times, trainer_times, plain.losses[-1])


def row(case: str, summary: dict, epochs: int, plain_times: list, trainer_times: list, plain_loss: float) -> dict:
    """Each side's best run (as timeit: on a shared machine, noise only adds time) and the ratio of the
    medians beside it."""
    plain_s, trainer_s = min(plain_times), min(trainer_times)
    return {
        "case": case,
        "device": summary["device"],
        "plain_s": round(plain_s, 3),
        "trainer_s": round(trainer_s, 3),
        "ratio": round(trainer_s / plain_s, 3),
        "median_ratio": round(statistics.median(trainer_times) / statistics.median(plain_times), 3),
        "trainer_us_per_epoch": round(trainer_s / epochs * 1e6, 1),
        "plain_final_loss": plain_loss,
        "trainer_final_loss": summary["final_loss"],
        "runs": len(plain_times),
    }


def main_command_case(repeats: int, plain_s: float, *options: str) -> dict:
    """Wall time of `python scripts/train.py --accelerator cpu`, start-up included, against the five plain
    loops in one process (`plain_s`)."""
    times = []
    with tempfile.TemporaryDirectory() as root:
        for _ in range(repeats):
            start = time.perf_counter()
            command = [sys.executable, "scripts/train.py", "--accelerator", "cpu", "--default_root_dir", root]
            subprocess.run([*command, *options], cwd=ROOT, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    wall = statistics.median(times)
    return {
        "case": " ".join(["main command", *options]) + ", wall (5 networks x 10k epochs) vs 5 plain loops",
        "device": "cpu",
        "plain_s": round(plain_s, 2),
        "trainer_s": round(wall, 2),
        "ratio": round(wall / plain_s, 3),
        "runs": repeats,
    }


def seeds_case(copies: int, epochs: int, accelerator: str, root: str, repeats: int) -> dict:
    """One seed's run against `copies` seeds stacked at once (--seeds), both the main command's path."""
    network = TUTORIAL_MODELS["sequential"]
    one_times, stacked_times = [], []
    for _ in range(repeats):  # alternate, so that a noisy moment hits both sides alike
        seconds, one = trainer_run(network, "sequential", accelerator, root, BlobData(), epochs)
        one_times.append(seconds)
        seconds, stacked = trainer_run(network, "sequential", accelerator, root, BlobData(), epochs,
                                       "--seeds", str(copies))  # fmt: skip
        stacked_times.append(seconds)
    one_s, stacked_s = statistics.median(one_times), statistics.median(stacked_times)
    return {
        "case": f"sequential {epochs} epochs: {copies} seeds stacked vs 1 seed",
        "device": one["device"],
        "one_seed_s": round(one_s, 3),
        "seeds_s": round(stacked_s, 3),
        "ratio": round(stacked_s / one_s, 3),
        "one_seed_final_loss": one["final_loss"],
        "seed_0_final_loss": stacked["copies"]["final_loss"][0],
        "runs": repeats,
    }


SEED_COLUMNS = ["case", "device", "one_seed_s", "seeds_s", "ratio", "one_seed_final_loss", "seed_0_final_loss"]
COLUMNS = ["case", "device", "plain_s", "trainer_s", "ratio", "median_ratio", "trainer_us_per_epoch",
           "plain_final_loss", "trainer_final_loss"]  # fmt: skip


def print_table(rows: list[dict], columns: list[str] = COLUMNS) -> None:
    cells = [columns] + [[_format(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case, for the median")
    parser.add_argument(
        "--output", default=None, help="JSON file (default lightning_logs/benchmark-<accelerator>.json)"
    )
    parser.add_argument("--skip-large", action="store_true", help="skip the 1M-point cases")
    args = parser.parse_args()
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        sys.exit("benchmark.py: error: --accelerator gpu: no CUDA GPU is available on this machine")
    _quiet_lightning()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in TUTORIAL_MODELS:
            rows.append(tutorial_case(name, args.accelerator, device, root, args.repeats))
            print_table(rows[-1:])
        if not args.skip_large:
            epochs = 2 if args.accelerator == "cpu" else 20
            rows.append(large_case(None, epochs, args.accelerator, device, root, args.repeats))
            # Five epochs of batches: the first and the last are Lightning's own (the summary's initial loss is
            # epoch 0's train/loss; the last validates and checkpoints), at Lightning's cost a step.
            rows.append(large_case(4096, 5, args.accelerator, device, root, args.repeats))
    if args.accelerator == "cpu":
        rows.append(python_api_case(args.repeats))
        rows += dataloader_cases(args.repeats)
        rows.append(mini_batch_case(args.repeats))
        print_table(rows[-6:])
        plain_s = five_plain_loops()
        rows.append(main_command_case(args.repeats, plain_s))  # the networks at once, one process each (the default)
        rows.append(main_command_case(1, plain_s, "--jobs", "1"))  # one after the other, in one process
    print()
    print_table(rows)
    copies, epochs = (100, 2_000) if args.accelerator == "cpu" else (1_000, 10_000)  # targets: 10x, 2x
    with tempfile.TemporaryDirectory() as root:
        seed_rows = [seeds_case(copies, epochs, args.accelerator, root, repeats=1)]  # far from its target
    print()
    print_table(seed_rows, SEED_COLUMNS)
    rows += seed_rows
    output = Path(args.output or f"lightning_logs/benchmark-{args.accelerator}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
