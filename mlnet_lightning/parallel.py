"""Several networks trained at once, one process each (`--jobs`): a tutorial network keeps one CPU core
busy, so `--model all` on a 2-core machine trains on both. The workers are forked after start-up (the
imports take seconds) and send their progress to this process, which alone draws the bars."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser
from tqdm.auto import tqdm

from mlnet_lightning.callbacks import RunInterrupted

TrainOne = Callable[..., dict[str, Any]]


def can_train_in_parallel(config: Namespace) -> bool:
    """Whether each network trains on one CPU device, in a worker this system can fork (workers forked
    after CUDA started could not use it)."""
    on_cpu = config.accelerator == "cpu" or (config.accelerator == "auto" and not torch.cuda.is_available())
    one_device = config.strategy == "auto" and str(config.devices) in ("auto", "1") and config.num_nodes == 1
    return on_cpu and one_device and "fork" in multiprocessing.get_all_start_methods()


def auto_jobs(config: Namespace, networks: int) -> int:
    """Processes when `--jobs` is unset: every network at once where they can train in parallel and the
    machine has several cores; one otherwise.

    A worker runs one torch thread, so more workers than cores only share the cores out evenly: five
    networks on two cores end sooner at once (the last is not left alone on one core) than two by two."""
    return networks if can_train_in_parallel(config) and (os.cpu_count() or 1) > 1 else 1


class RemoteBar:
    """Stands in for a worker's tqdm bar: forwards what it shows to the parent process."""

    def __init__(self, updates: multiprocessing.Queue, slot: int, **options: Any) -> None:
        self.updates, self.slot, self.n, self.postfix = updates, slot, 0, {}
        self.shown_at = 0.0
        updates.put(("open", slot, options))

    def set_postfix(self, postfix: dict[str, str], refresh: bool = True) -> None:
        self.postfix = postfix

    def update(self, n: int = 1) -> None:
        """Count `n` more; sent at most every 0.1 s, as tqdm redraws."""
        self.n += n
        if time.monotonic() - self.shown_at >= 0.1:
            self.shown_at = time.monotonic()
            self.refresh()

    def refresh(self) -> None:
        self.updates.put(("show", self.slot, (self.n, self.postfix)))

    def close(self) -> None:
        self.updates.put(("close", self.slot, None))


class WorkerDied(RuntimeError):
    """A worker process ended without reporting (killed, out of memory)."""


def _worker(train_one: TrainOne, updates: multiprocessing.Queue, slot: int, jobs: int, args: tuple) -> None:
    # Ctrl-C before the fit starts interrupts at once (the parent's handler came with the fork).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # The cores are shared out among the workers.
    torch.set_num_threads(max(1, torch.get_num_threads() // jobs))
    try:
        summary = train_one(*args, make_bar=lambda **bar: RemoteBar(updates, slot, **bar))
        updates.put(("done", slot, summary))
    except (RunInterrupted, KeyboardInterrupt) as stop:
        updates.put(("stopped", slot, (getattr(stop, "summary", {}), getattr(stop, "checkpoint", ""))))
    except Exception as error:  # noqa: BLE001 - every failure goes back to the parent, which reports it
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001
            error = RuntimeError("".join(traceback.format_exception(error)))
        updates.put(("failed", slot, error))


def train_in_parallel(
    train_one: TrainOne,
    networks: list[tuple[str, type[L.LightningModule]]],
    config: Namespace,
    parser: LightningArgumentParser,
    jobs: int,
    summaries: list[dict[str, Any]],
) -> None:
    """Train `networks` with `train_one`, `jobs` at a time, appending their summaries in the networks'
    order. After a failure or Ctrl-C no new network starts; the running ones finish (after Ctrl-C, they
    stop at their next checkpoint, as a single run does), then the first error is raised."""
    context = multiprocessing.get_context("fork")
    updates = context.Queue()
    waiting = list(enumerate(networks))
    running: dict[int, tuple[str, multiprocessing.Process]] = {}
    results: dict[int, dict[str, Any]] = {}
    stopped: dict[int, tuple[dict[str, Any], str]] = {}  # summary so far (empty if none) and checkpoint
    failures: list[Exception] = []
    bars: dict[int, tqdm] = {}
    interrupted = False

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True  # the workers got the same Ctrl-C, and stop on their own

    def halted() -> bool:
        """No new network starts after a failure or Ctrl-C."""
        return bool(failures or stopped or interrupted)

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    try:
        while running or (waiting and not halted()):
            while waiting and len(running) < jobs and not halted():
                slot, (name, model_class) = waiting.pop(0)
                process = context.Process(
                    target=_worker, args=(train_one, updates, slot, jobs, (name, model_class, config, parser))
                )
                process.start()
                running[slot] = name, process
            # A worker reports before it ends, so one that ended unreported died (killed, out of memory).
            for slot, (name, process) in list(running.items()):
                if process.exitcode not in (None, 0):
                    running.pop(slot)
                    failures.append(WorkerDied(f"{name}: its worker process died (exit status {process.exitcode})"))
            try:
                kind, slot, payload = updates.get(timeout=1)
            except queue.Empty:
                continue
            if kind == "open":  # running networks' bars share the lines below the finished ones
                bars[slot] = tqdm(**payload, leave=False)
            elif kind == "show":
                bars[slot].n, postfix = payload
                bars[slot].set_postfix(postfix, refresh=False)
                bars[slot].refresh()
            elif kind == "close":
                bar = bars.pop(slot)
                finished = str(bar)
                bar.close()
                tqdm.write(finished, file=sys.stderr)  # stays, above the running bars
            else:
                if slot in running:  # else already reported dead
                    running.pop(slot)[1].join()
                if kind == "done":
                    results[slot] = payload
                elif kind == "stopped":
                    stopped[slot] = payload
                else:
                    failures.append(payload)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        for bar in bars.values():
            bar.close()
    runs = results | {slot: summary for slot, (summary, _) in stopped.items() if summary}
    summaries += [runs[slot] for slot in sorted(runs)]
    if failures:
        raise failures[0]
    checkpoints = [checkpoint for _, checkpoint in stopped.values() if checkpoint]
    if stopped or interrupted:
        raise RunInterrupted(checkpoint=checkpoints[-1] if checkpoints else "")  # its runs are in `summaries`
