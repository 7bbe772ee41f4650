"""What the pictures cost: `train.py` runs with --pictures false and true, each in a fresh process.

    python scripts/benchmark_pictures.py --model sequential --repeats 3

Each run reports its fit_seconds (summary.json) and, timed inside the process, the seconds spent on
the boundary snapshots during training and on the pictures drawn once fit has ended (PNG files,
TensorBoard images, HPARAMS; matplotlib's import included), as wall and CPU time: on a busy machine
the wall times of separate runs differ more than the pictures cost. Runs alternate; numbers are medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def timed(method: Callable, totals: dict[str, float], key: str) -> Callable:
    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        method(*args, **kwargs)
        totals[f"{key}_wall"] += time.perf_counter() - wall
        totals[f"{key}_cpu"] += time.process_time() - cpu

    return wrapper


def one_run(train_args: list[str]) -> None:
    """Train once in this process with the pictures' hooks timed; print the numbers as JSON."""
    import lightning as L

    from mlnet_lightning import cli, pictures

    totals = dict.fromkeys(("fit_cpu", "snapshots_wall", "snapshots_cpu", "end_wall", "end_cpu", "fit_wall"), 0.0)
    L.Trainer.fit = timed(L.Trainer.fit, totals, "fit")
    pictures.Pictures.snapshot = timed(pictures.Pictures.snapshot, totals, "snapshots")
    pictures.Pictures.on_fit_end = timed(pictures.Pictures.on_fit_end, totals, "end")
    root = Path(train_args[train_args.index("--default_root_dir") + 1])
    assert cli.main(train_args) == 0
    (summary_file,) = root.glob("*/version_*/summary.json")  # one model, one run
    summary = json.loads(summary_file.read_text())
    print(json.dumps({"fit": summary["fit_seconds"], **totals}))


def main() -> None:
    if sys.argv[1:2] == ["--one-run"]:
        return one_run(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sequential")
    parser.add_argument("--max_epochs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"false": [], "true": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for pictures in runs:
                train_args = ["--model", args.model, "--max_epochs", str(args.max_epochs), "--pictures", pictures]
                train_args += ["--default_root_dir", f"{folder}/{pictures}-{repeat}", "--enable_progress_bar", "false"]
                command = [sys.executable, __file__, "--one-run", *train_args]
                result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout.splitlines()[-1])
                runs[pictures].append(result)
                print(f"pictures {pictures:5} " + "  ".join(f"{k} {v:.3f}" for k, v in result.items()))

    def median(pictures: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[pictures])

    for run in runs["false"] + runs["true"]:
        run["fit_cpu"] -= run["end_cpu"]  # Trainer.fit's CPU time holds on_fit_end, where the files are drawn
    fit_off, fit_on = median("false", "fit"), median("true", "fit")
    cpu_off, cpu_on = median("false", "fit_cpu"), median("true", "fit_cpu")
    share = statistics.median(run["snapshots_wall"] / run["fit"] for run in runs["true"])
    cpu_share = statistics.median(run["snapshots_cpu"] / run["fit_cpu"] for run in runs["true"])
    print(f"median fit_seconds: {fit_off:.2f} s with --pictures false, {fit_on:.2f} s with --pictures true")
    print(f"median fit CPU seconds: {cpu_off:.2f} s without, {cpu_on:.2f} s with ({cpu_on / cpu_off - 1:+.1%})")
    print(
        f"snapshots during training: {median('true', 'snapshots_wall'):.3f} s wall "
        f"({median('true', 'snapshots_cpu'):.3f} s CPU): {share:.1%} of the run's fit time, "
        f"{cpu_share:.1%} of its CPU time"
    )
    print(
        f"pictures at the end: {median('true', 'end_wall'):.3f} s wall ({median('true', 'end_cpu'):.3f} s CPU); "
        f"without pictures (HPARAMS only): {median('false', 'end_wall'):.3f} s wall"
    )


if __name__ == "__main__":
    main()
