"""The GPU check (docs/gpu.md): everything `--accelerator gpu` promises, in one run and one short table.

    scripts/gpu_check.sh             # on a machine with one CUDA GPU (under 4 minutes)
    scripts/gpu_check.sh --dry-run   # anywhere: the same steps on the CPU, shortened (CI runs it)

1. the `gpu` tests (tests/test_gpu.py);
2. the main command, `python scripts/train.py --accelerator gpu`, against the tutorial's numbers
   (mlnet_lightning/reference.py: losses to 1e-4, accuracies to 1e-3), and its wall time;
3. each tutorial network's 10,000 epochs replayed from a CUDA graph against the same epochs eager
   (seconds, ratio, final losses equal to 1e-6);
4. `python scripts/benchmark.py --accelerator gpu` (stacked seeds, the 2-256-256-4 network on 1M points).

The dry run trains on the CPU, 300 epochs, checked against the plain loop (mlnet_lightning/baseline.py) and
the tutorial's initial losses, replays through the CPU stand-in graph, and skips the benchmark.
Exit status 0 when every row is ok or skipped; the table also goes to lightning_logs/gpu-check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from mlnet_lightning.baseline import fit_tutorial, one_cpu_thread
from mlnet_lightning.cli import _quiet_lightning
from mlnet_lightning.data import BlobData
from mlnet_lightning.internals import TRY_UNTESTED
from mlnet_lightning.models import TUTORIAL_MODELS
from mlnet_lightning.reference import TUTORIAL

ROOT = Path(__file__).resolve().parents[1]
LOSS_TOLERANCE, ACCURACY_TOLERANCE = 1e-4, 1e-3
SAME_LOSS = 1e-6  # replayed against eager
DRY_RUN_EPOCHS = 300


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, shortened")
    parser.add_argument("--output", default="lightning_logs/gpu-check.json", help="where the table goes as JSON")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU on this machine (--dry-run checks the steps on the CPU)", file=sys.stderr)
        return 2
    _quiet_lightning()
    # A GPU machine's torch may be one the fast path was not tested on: this check is that test.
    os.environ[TRY_UNTESTED] = "1"
    start = time.perf_counter()
    rows = gpu_tests()
    rows += main_command(args.dry_run)
    rows += replayed_against_eager(args.dry_run)
    rows += benchmark(args.dry_run)
    device = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()
    rows.append(("gpu_check total", "ok", f"{time.perf_counter() - start:.0f} s wall on {device}"))
    print_table(rows)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {"device": device, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    output.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(status in ("ok", "skipped") for _, status, _ in rows) else 1


def run(*command: str, timeout: int) -> subprocess.CompletedProcess:
    """A command of this checkout, its output kept (and shown where it fails)."""
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        return subprocess.CompletedProcess(command, 124, expired.stdout or "", f"timed out after {timeout} s")
    if result.returncode != 0:
        print(f"$ {' '.join(command)}\n{result.stdout[-4000:]}{result.stderr[-4000:]}", file=sys.stderr)
    return result


def gpu_tests() -> list[tuple[str, str, str]]:
    start = time.perf_counter()
    result = run(sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                 "tests/test_gpu.py", timeout=240)  # fmt: skip
    lines = result.stdout.strip().splitlines()
    summary = re.sub(r"=+", "", lines[-1]).strip() if lines else result.stderr.strip()[-200:]
    status = "ok" if result.returncode == 0 else "FAIL"
    return [("gpu tests (pytest -m gpu)", status, f"{summary} ({time.perf_counter() - start:.0f} s)")]


def main_command(dry_run: bool) -> list[tuple[str, str, str]]:
    """The main command as a user types it; then each network's summary against what it must reproduce."""
    command = [sys.executable, "scripts/train.py", "--accelerator", "cpu" if dry_run else "gpu"]
    if dry_run:
        command += ["--max_epochs", str(DRY_RUN_EPOCHS)]
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        result = run(*command, "--default_root_dir", root, timeout=300)
        wall = time.perf_counter() - start
        paths = Path(root).glob("*/version_*/summary.json")
        summaries = {path.parent.parent.name: json.loads(path.read_text()) for path in paths}
    status = "ok" if result.returncode == 0 else "FAIL"
    rows = [(f"main command ({' '.join(command[2:])})", status, f"{wall:.1f} s wall")]
    expected = plain_loop_numbers(DRY_RUN_EPOCHS) if dry_run else TUTORIAL
    for name in TUTORIAL_MODELS:
        rows.append(compare(name, summaries.get(name), expected[name]))
    return rows


def plain_loop_numbers(epochs: int) -> dict[str, dict[str, float]]:
    """What a shortened main command must give: the tutorial's plain loop for as many epochs (and the
    tutorial's own initial losses, which do not depend on the epochs)."""
    data = BlobData()
    numbers = {}
    with one_cpu_thread():
        for name in TUTORIAL_MODELS:
            run_ = fit_tutorial(name, data.x_train, data.y_train, data.x_val, data.y_val, epochs=epochs)
            numbers[name] = {"initial_loss": TUTORIAL[name]["initial_loss"], "final_loss": run_.losses[-1],
                             "train_acc": run_.train_accs[-1], "val_acc": run_.val_acc}  # fmt: skip
    return numbers


def compare(name: str, summary: dict | None, expected: dict[str, float]) -> tuple[str, str, str]:
    if summary is None:
        return f"main command, {name}", "FAIL", "no summary.json"
    off = []
    for key, value in expected.items():
        tolerance = LOSS_TOLERANCE if "loss" in key else ACCURACY_TOLERANCE
        if not abs(summary[key] - value) <= tolerance:
            off.append(f"{key} {summary[key]:.6f} (expected {value:.6f})")
    detail = "; ".join(off) or (
        f"final_loss {summary['final_loss']:.6f}, val_acc {summary['val_acc']:.4f}, "
        f"{summary['epochs']} epochs on {summary['device']}"
    )
    return f"main command, {name}", "FAIL" if off else "ok", detail


def replayed_against_eager(dry_run: bool) -> list[tuple[str, str, str]]:
    """Each network's epochs through the Python API, replayed and eager, on the same device (in a dry run,
    the CPU's tape)."""
    epochs = DRY_RUN_EPOCHS if dry_run else 10_000
    rows = []
    for name, network in TUTORIAL_MODELS.items():
        replayed_s, replayed_loss, replayer = timed_fit(network(), epochs, dry_run, replayed=True)
        eager_s, eager_loss, _ = timed_fit(network(), epochs, dry_run, replayed=False)
        same = abs(replayed_loss - eager_loss) <= SAME_LOSS
        used = replayer is not None and not replayer.failed and replayer.replayed > 0
        detail = (
            f"{replayed_s:.2f} s vs {eager_s:.2f} s ({eager_s / replayed_s:.1f}x), final losses "
            f"{replayed_loss:.6f} / {eager_loss:.6f}{'' if used else ', NOT replayed'}"
        )
        rows.append((f"{name} replayed vs eager, {epochs} epochs", "ok" if same and used else "FAIL", detail))
    return rows


def timed_fit(model: L.LightningModule, epochs: int, dry_run: bool, replayed: bool):
    """Seconds of Trainer.fit (validating every 100 epochs, nothing else), the final training loss, the
    fit's replayer (None where none)."""
    model.replay = replayed
    trainer = L.Trainer(
        max_epochs=epochs,
        check_val_every_n_epoch=100,
        accelerator="cpu" if dry_run else "gpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=BlobData())
    if not dry_run:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    replayer = getattr(trainer.optimizers[0], "_replayed_epochs", None)
    return seconds, trainer.callback_metrics["train/loss"].item(), replayer


def benchmark(dry_run: bool) -> list[tuple[str, str, str]]:
    """scripts/benchmark.py's rows: ratios against the plain loop, stacked seeds, the 1M-point network."""
    if dry_run:
        return [("scripts/benchmark.py --accelerator gpu", "skipped", "dry run")]
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "benchmark.json"
        result = run(sys.executable, "scripts/benchmark.py", "--accelerator", "gpu", "--repeats", "1",
                     "--output", str(output), timeout=240)  # fmt: skip
        if result.returncode != 0:
            return [("scripts/benchmark.py --accelerator gpu", "FAIL", f"exit status {result.returncode}")]
        rows = json.loads(output.read_text())["rows"]
    return [(f"benchmark: {row['case']}", "ok", benchmark_detail(row)) for row in rows]


def benchmark_detail(row: dict) -> str:
    """A benchmark row in a few numbers, whatever its columns."""
    pairs = [("plain_s", "trainer_s"), ("one_seed_s", "seeds_s")]
    for first, second in pairs:
        if first in row and second in row:
            return f"{row[second]} s vs {row[first]} s ({first[:-2]}): ratio {row.get('ratio')}"
    return ", ".join(f"{key} {value}" for key, value in row.items() if key not in ("case", "device"))


def print_table(rows: list[tuple[str, str, str]]) -> None:
    cells = [("check", "result", "detail"), *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(2)]
    print()
    for check, status, detail in cells:
        print(f"{check.ljust(widths[0])}  {status.ljust(widths[1])}  {detail}")


if __name__ == "__main__":
    sys.exit(main())
