"""Signals that stop a command: Ctrl-C (SIGINT) and SIGTERM, what SLURM, Kubernetes and systemd send.

While a network trains, a stop request finishes the current epoch and checkpoints it (callbacks.StopOnInterrupt);
elsewhere (imports, parsing, between runs) nothing needs saving and the command stops at once. Either way it
says so in one line and exits with 130 after Ctrl-C, 143 after SIGTERM, as a shell reports a process those
signals ended. This module imports nothing heavy: scripts install it before torch loads (seconds).
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import sys
import threading
from typing import Any, TextIO

# A --jobs parent asks its workers to stop with this signal (also sent when it dies): it is not one of their
# own stop requests, so it never counts as "a second signal" that stops them at once.
PARENT_ASKS = signal.SIGUSR2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, PARENT_ASKS)


class Terminated(BaseException):
    """SIGTERM (or a --jobs parent's request) where nothing needs saving: stops at once, as Ctrl-C's
    KeyboardInterrupt does (a BaseException like it, so that no `except Exception` swallows it)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def saved_handlers() -> dict[int, Any]:
    """The stop signals' handlers, to give back with restore_handlers (a command run in-process, as tests
    do, leaves them as it found them); none off the main thread, which takes no signals."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}


def take_signals(handlers: dict[int, Any]) -> dict[int, Any]:
    """Handle these signals, but those ignored from the start (a background job's Ctrl-C), which stay
    ignored, as Python leaves them; returns the handlers replaced, by signal."""
    previous = saved_handlers()
    taken = {signum: previous[signum] for signum in handlers if previous and previous[signum] is not signal.SIG_IGN}
    for signum in taken:
        signal.signal(signum, handlers[signum])
    return taken


def restore_handlers(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        if handler is not None:  # None: a handler not set from Python, which cannot be set back
            signal.signal(signum, handler)


def ignore_stop_signals() -> None:
    """Once a stop has ended the training, a late signal has nothing left to stop (and would break the
    report of the stop with a traceback)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def exit_status(signum: int) -> int:
    """128 + the signal's number, as a shell reports a process it ended: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def describe(signum: int) -> str:
    """How a message names a stop request."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def stopped_before_training(program: str, signum: int) -> int:
    """Say that the command stopped where nothing was training; returns its exit status."""
    print(f"{program}: stopped by {describe(signum)} while no network was training; nothing to save", file=sys.stderr)
    return exit_status(signum)


def run_command(program: str, module: str, function: str = "main") -> int:
    """Import `module` (seconds: torch, Lightning) and run its `function`. A stop request during the import
    ends the process at once, in one line: an exception raised inside a C extension's initialisation
    can end in an unrelated ImportError, or an abort. Ctrl-C later, in a command with nothing to save
    (evaluate.py, predict.py; train.py handles its own), ends it in one line too. Output whose reader has
    gone (`train.py | head -1`) ends it with 141, as SIGPIPE would, and nothing more said."""

    def exit_at_once(signum: int, frame: Any) -> None:
        stopped_before_training(program, signum)
        sys.stderr.flush()
        os._exit(exit_status(signum))

    def reader_gone(stream: TextIO) -> bool:
        # A pipe whose reading end has closed: poll reports an error on its writing end.
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))

    previous = take_signals({signal.SIGINT: exit_at_once, signal.SIGTERM: exit_at_once})
    main = getattr(importlib.import_module(module), function)
    restore_handlers(previous)
    try:
        return main()
    except KeyboardInterrupt:
        return stopped_before_training(program, signal.SIGINT)
    except BrokenPipeError:
        gone = [stream for stream in (sys.stdout, sys.stderr) if reader_gone(stream)]
        if not gone:
            raise  # a pipe of the command's own, not its output
        # The interpreter's last flush would write there and fail again (Python's signal docs, "Note on SIGPIPE").
        for stream in gone:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        return exit_status(signal.SIGPIPE)
