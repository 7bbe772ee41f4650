"""An epoch recorded as the operations it ran, and replayed by calling them again: the CPU's counterpart
of a CUDA graph (`replay.py` checks it and falls back from it exactly as from one).

On a CPU an epoch of the tutorial's networks is some seventy tiny operations, and most of its time is
the work around each: Python, building autograd's graph, running its engine. The tape records the
epoch once, below autograd (where the backward pass shows as the operations it runs), and replays it
as one generated Python function that calls the same operators, in the same order, on the same
tensors: the same kernels on the same inputs, so the same numbers bit for bit, in about three quarters
of the time (`scripts/benchmark_replay.py`, `scratch`: 250 against 346 us an epoch).

A tape replays the operations, not the Python that chose them. Recording refuses what Python could
decide differently next time: an epoch that reads a value back (`.item()`, `if tensor.any():`) or
whose shapes depend on the data. Python state of its own (a counter in `forward`) is caught by the
replayer's comparison with eager epochs only if it shows within the compared epochs, as with a CUDA
graph: such a network sets `replay = False`.

Two names come from torch's internals (`mlnet_lightning.internals`): `TorchDispatchMode` (the documented way
to see operators below autograd, kept in `torch.utils._python_dispatch`) and the C++ operator of an
OpOverload. tests/test_replay.py pins both against the installed torch: without them every capture falls
back, and its tests fail.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mlnet_lightning.internals import TorchDispatchMode, operator_of


def why_not_replayable(func, args: tuple) -> str | None:
    """Why Python might decide differently after this operator next epoch; None if it could not."""
    if torch.Tag.data_dependent_output in func.tags:
        return f"reads a value back to Python ({func})"
    if torch.Tag.dynamic_output_shape not in func.tags:
        return None
    # Indexing is tagged so for boolean masks; integer indices give an output of their own shape.
    integer_indices = func is torch.ops.aten.index.Tensor and not any(
        index is not None and index.dtype in (torch.bool, torch.uint8) for index in args[1]
    )
    return None if integer_indices else f"calls {func}, whose output's shape depends on the data"


class NotReplayable(RuntimeError):
    """The recorded epoch did something a replay of its operations would not repeat."""


class OpTape:
    """One epoch's operations, recorded by running the epoch once, replayed by a generated function."""

    warming_up = staticmethod(nullcontext)
    returns_record = True  # each replay makes new tensors, as the eager epoch does
    exact = True  # the very same kernels on the same inputs: checked bit for bit

    def capture(self, step: Callable[[], Any]) -> None:
        """Record `step` by running it (unlike a CUDA capture, this trains an epoch: the caller puts the
        state back)."""
        recorder = Recorder()
        with recorder:
            result = step()
        self.source, self.run, self.constants = recorder.function(result)
        # The recorded operations include the backward pass: autograd must not record them again.
        self.no_grad = torch.no_grad()  # one, entered every replay: making it costs a microsecond or two

    def replay(self) -> Any:
        """One epoch again; returns what the recorded step returned, made anew."""
        with self.no_grad:
            return self.run(self.constants)


class Line(NamedTuple):
    code: str
    reads: set[str]
    makes: list[str]
    droppable: bool  # a view: nothing is lost when nobody reads it


class Recorder(TorchDispatchMode):
    """Runs each operator as usual, and writes the line of Python that makes the same call again: a tensor
    the epoch made is a variable (known by its id while it lives), any other argument a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[Line] = []
        self.variables: dict[int, str] = {}
        self.watched: list[weakref.ref] = []
        self.constants: list = []  # held, so that no id of theirs is reused while recording
        self.constant_index: dict[int, int] = {}
        self.operators: dict[str, Callable] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "profiler":  # a profiler's marks (Optimizer.step has some) label work; they do none
            return func(*args, **kwargs)
        why = why_not_replayable(func, args)
        if why is not None:
            raise NotReplayable(f"its epoch {why}")
        output = func(*args, **kwargs)
        results = list(output) if isinstance(output, (list, tuple)) else [output]
        if not all(value is None or isinstance(value, Tensor) for value in results):
            raise NotReplayable(f"its epoch reads a value back to Python ({func})")
        if func is torch.ops.aten.detach.default and id(args[0]) in self.variables:
            # Under no_grad nothing the tape made needs detaching: the alias is the tensor itself.
            self.name(output, self.variables[id(args[0])])
            return output
        reads: set[str] = set()
        arguments = [self.source(a, reads) for a in args] + [f"{k}={self.source(v, reads)}" for k, v in kwargs.items()]
        operator = str(func).replace(".", "_")
        # The C++ operator itself: OpOverload's Python __call__ costs a frame a call (283 against 250 us an epoch).
        self.operators[operator] = operator_of(func)
        inputs = {id(leaf) for leaf in leaves((args, kwargs)) if isinstance(leaf, Tensor)}
        targets = []
        for index, value in enumerate(results):
            new = isinstance(value, Tensor) and id(value) not in inputs  # an in-place operator returns its input
            targets.append(self.name(value, f"t{len(self.lines)}_{index}") if new else "_")
        makes = [target for target in targets if target != "_"]
        if not makes:
            assignment = ""
        elif isinstance(output, (list, tuple)):
            assignment = "".join(f"{target}, " for target in targets) + "= "
        else:
            assignment = f"{makes[0]} = "
        droppable = func.is_view and torch.Tag.inplace_view not in func.tags
        self.lines.append(Line(f"{assignment}{operator}({', '.join(arguments)})", reads, makes, droppable))
        return output

    def name(self, tensor: Tensor, variable: str) -> str:
        """Know `tensor` as `variable` while it lives (its id may then go to another tensor)."""
        key = id(tensor)
        self.variables[key] = variable
        self.watched.append(weakref.ref(tensor, lambda _, key=key: self.variables.pop(key, None)))
        return variable

    def source(self, value: Any, reads: set[str]) -> str:
        """`value` as an expression of the generated function."""
        if isinstance(value, Tensor) and id(value) in self.variables:
            reads.add(self.variables[id(value)])
            return self.variables[id(value)]
        if isinstance(value, list):
            return "[" + ", ".join(self.source(item, reads) for item in value) + "]"
        if isinstance(value, tuple):
            return "(" + "".join(self.source(item, reads) + ", " for item in value) + ")"
        if value is None or type(value) in (bool, int):
            return repr(value)
        if id(value) not in self.constant_index:  # a tensor from outside, a float, a dtype, a device, ...
            self.constant_index[id(value)] = len(self.constants)
            self.constants.append(value)
        return f"c[{self.constant_index[id(value)]}]"

    def function(self, result: Any) -> tuple[str, Callable[[list], Any], list]:
        """The recorded epoch as `run(constants)` returning `result`, with its source and constants. Views
        nobody reads are dropped; each variable is freed after its last use, as autograd frees what it
        saved (a 1M-point batch's activations are gigabytes)."""
        later_reads: set[str] = set()
        body = [f"    return {self.source(result, later_reads)}"]
        for line in reversed(self.lines):
            if line.makes and line.droppable and not later_reads.intersection(line.makes):
                continue
            freed = sorted((line.reads | set(line.makes)) - later_reads)
            body += [f"    del {', '.join(freed)}"] if freed else []
            body.append(f"    {line.code}")
            later_reads |= line.reads
        source = "def run(c):\n" + "\n".join(reversed(body)) + "\n"
        self.watched.clear()  # the tensors still alive are no longer watched
        namespace = dict(self.operators)
        exec(compile(source, "<epoch tape>", "exec"), namespace)  # the source is ours, made from the recorded calls
        return source, namespace["run"], self.constants


def leaves(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]
