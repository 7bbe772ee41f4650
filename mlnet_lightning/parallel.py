"""Several networks trained at once, one process each (`--jobs`): a tutorial network keeps one CPU core
busy, so `--model all` on a 2-core machine trains on both. The workers are forked after start-up (the
imports take seconds) and send their progress to this process, which alone draws the bars."""

from __future__ import annotations

import contextlib
import ctypes
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
from mlnet_lightning.signals import (
    PARENT_ASKS,
    STOP_SIGNALS,
    Terminated,
    describe,
    ignore_stop_signals,
    raise_terminated,
    restore_handlers,
    take_signals,
)

TrainOne = Callable[..., dict[str, Any]]


def can_train_in_parallel(config: Namespace) -> bool:
    """Whether each network trains on one CPU device, in a worker this system can fork (workers forked
    after CUDA started could not use it)."""
    on_cpu = config.accelerator == "cpu" or (config.accelerator == "auto" and not torch.cuda.is_available())
    one_device = config.strategy == "auto" and str(config.devices) in ("auto", "1") and config.num_nodes == 1
    return on_cpu and one_device and "fork" in multiprocessing.get_all_start_methods()


def auto_jobs(config: Namespace, networks: int) -> int:
    """Processes when `--jobs` is unset, where the networks can train in parallel on several cores: one a
    core, plus the networks that would otherwise train alone at the end (five on two cores: three at once,
    then two); one process otherwise.

    A worker runs one torch thread. More workers than cores share the cores out, at a cost (measured on
    two cores: 13% more CPU time a worker with five at once, 8% with three); fewer leave cores idle at the
    end (two by two, the fifth trains alone). Three then two ended 1 s sooner than five at once, 1.7 s
    sooner than two by two (`--model all`, 17 s in all)."""
    cores = os.cpu_count() or 1
    if not can_train_in_parallel(config) or cores == 1:
        return 1
    return networks if networks <= cores else cores + networks % cores


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
    """A worker process ended without reporting (killed, out of memory), or stopped on a signal of its own."""


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send PARENT_ASKS to this process when the parent dies, even by SIGKILL (Linux), so
    that no worker trains on as an orphan; the signal's handler stops the run at a checkpoint."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, PARENT_ASKS)
    if os.getppid() != parent:  # it died before prctl: the kernel sends nothing
        os.kill(os.getpid(), PARENT_ASKS)


def _worker(
    train_one: TrainOne, updates: multiprocessing.Queue, slot: int, jobs: int, parent: int, args: tuple
) -> None:
    # Before the fit a stop request stops at once: nothing needs saving (StopOnInterrupt takes over in the fit).
    take_signals({signal.SIGINT: signal.default_int_handler, signal.SIGTERM: raise_terminated})
    signal.signal(PARENT_ASKS, raise_terminated)
    # The cores are shared out among the workers.
    torch.set_num_threads(max(1, torch.get_num_threads() // jobs))
    try:
        _stop_with_parent(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        kind, payload = "done", train_one(*args, make_bar=lambda **bar: RemoteBar(updates, slot, **bar))
    except RunInterrupted as stop:
        kind, payload = "stopped", (stop.summary, stop.checkpoint, stop.signum)
    except KeyboardInterrupt:
        kind, payload = "stopped", ({}, "", signal.SIGINT)
    except Terminated as stop:
        kind, payload = "stopped", ({}, "", stop.signum)
    except Exception as error:  # noqa: BLE001 - every failure goes back to the parent, which reports it
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001
            error = RuntimeError("".join(traceback.format_exception(error)))
        kind, payload = "failed", error
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # the run has ended: nothing is left to stop
    if os.getppid() != parent:  # nobody reads the queue now, and exiting must not wait for it
        updates.cancel_join_thread()
        return
    updates.put((kind, slot, payload))


def train_in_parallel(
    train_one: TrainOne,
    networks: list[tuple[str, type[L.LightningModule]]],
    config: Namespace,
    parser: LightningArgumentParser,
    jobs: int,
    summaries: list[dict[str, Any]],
) -> None:
    """Train `networks` with `train_one`, `jobs` at a time, appending their summaries in the networks'
    order. This process and its workers live and die together:
    - Ctrl-C or SIGTERM (the signal of the first request) stops every worker at a checkpoint, as a single
      run stops, and raises RunInterrupted; a second one stops them at once;
    - a worker that dies, or stops on a signal of its own, stops the others so, and raises WorkerDied;
    - a worker that fails (its training diverged) lets the others finish, then its error is raised;
    - this process's death, even by SIGKILL, stops the workers at a checkpoint (Linux).
    After any of these no new network starts."""
    context = multiprocessing.get_context("fork")
    updates = context.Queue()
    waiting = list(enumerate(networks))
    running: dict[int, tuple[str, multiprocessing.Process]] = {}
    results: dict[int, dict[str, Any]] = {}
    stopped: dict[int, tuple[dict[str, Any], str]] = {}  # summary so far (empty if none) and checkpoint
    failures: list[Exception] = []
    bars: dict[int, tqdm] = {}
    asked = 0  # the signal that asked this command to stop
    requests = 0  # how many times the workers are to be asked to stop (a second time: at once)
    told: dict[int, int] = {}  # how many times each running worker has been asked

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal asked, requests
        asked = asked or signum
        requests += 1  # told below: a handler that sent signals itself could send one twice

    def stop_the_others(name: str, what: str) -> None:
        """A worker ended abnormally: the others stop at a checkpoint."""
        nonlocal requests
        advice = "the others stopped at a checkpoint: resume with the same command and --ckpt_path last"
        failures.append(WorkerDied(f"{name}: its worker process {what}; {advice}"))
        requests = max(requests, 1)

    def halted() -> bool:
        """No new network starts after a failure or a stop request."""
        return bool(failures or stopped or requests)

    previous_handlers = take_signals({signal.SIGINT: on_signal, signal.SIGTERM: on_signal})
    try:
        while running or (waiting and not halted()):
            while waiting and len(running) < jobs and not halted():
                slot, (name, model_class) = waiting.pop(0)
                process = context.Process(
                    target=_worker,
                    args=(train_one, updates, slot, jobs, os.getpid(), (name, model_class, config, parser)),
                )
                # Held back while forking: a worker takes them with its own handlers, not the parent's.
                held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
                try:
                    process.start()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
                running[slot] = name, process
            # A worker reports before it ends, so one that ended unreported died (killed, out of memory).
            for slot, (name, process) in list(running.items()):
                if process.exitcode not in (None, 0):
                    running.pop(slot)
                    stop_the_others(name, f"died (exit status {process.exitcode})")
            for slot, (_, process) in running.items():
                for _ in range(requests - told.get(slot, 0)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, PARENT_ASKS)
                told[slot] = requests
            try:
                kind, slot, payload = updates.get(timeout=0.2)  # signals and deaths are handled between reports
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
                name = networks[slot][0]
                if slot in running:  # else already reported dead
                    running.pop(slot)[1].join()
                if kind == "done":
                    results[slot] = payload
                elif kind == "stopped":
                    summary, checkpoint, signum = payload
                    stopped[slot] = summary, checkpoint
                    if not requests:  # a stop of its own (a signal to the worker alone)
                        stop_the_others(name, f"was stopped by {describe(signum)}")
                else:
                    failures.append(payload)
    finally:
        if asked:  # the command ends
            ignore_stop_signals()
        else:
            restore_handlers(previous_handlers)
        for bar in bars.values():
            bar.close()
    runs = results | {slot: summary for slot, (summary, _) in stopped.items() if summary}
    summaries += [runs[slot] for slot in sorted(runs)]
    checkpoints = [checkpoint for _, checkpoint in stopped.values() if checkpoint]
    if asked:
        raise RunInterrupted(checkpoint=checkpoints[-1] if checkpoints else "", signum=asked)  # runs: in `summaries`
    if failures:
        raise failures[0]
