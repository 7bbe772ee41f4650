"""export.py: a checkpoint's network as an ONNX or TorchScript file, checked against the checkpoint."""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import warnings
from argparse import ArgumentError
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentParser
from torch import Tensor

from mlnet_lightning.cli import print_error
from mlnet_lightning.files import atomic_path
from mlnet_lightning.inference import CKPT_HELP, checkpoint_path, load_from_working_directory

FORMATS = ("onnx", "torchscript")
# Largest difference allowed between the exported file's outputs and the checkpoint network's: absolute for
# outputs up to 1 (probabilities), relative beyond, where float32's own step exceeds it (1.5e-5 from 128 on:
# logits in the hundreds differ by a step or two between runtimes that sum in another order).
TOLERANCE = 1e-5
# Points the export sees (traced, or torch.export's example): not the number checked, so that a graph
# that froze the number of points fails the check; more than 1 (torch.export fixes a dimension of size 1).
EXAMPLE_POINTS = 3
INPUT_NAME, OUTPUT_NAME = "points", "output"
# What --format onnx needs beyond torch: torch.onnx's exporter uses onnx and onnxscript, the check onnxruntime.
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class ExportError(RuntimeError):
    """The network could not be exported, or its file does not compute what the checkpoint does (exit 1)."""


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' warnings and log lines (deprecations, torchvision's missing operators):
    the command says one line, and the check below, not a warning, tells whether the file is right."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: L.LightningModule, example: Tensor, path: Path) -> str:
    """Write the network to `path` as ONNX, with a batch dimension of any size; returns how it was made.

    torch.onnx's default exporter since torch 2.9 (dynamo=True: torch.export, then onnxscript), not the
    TorchScript-based one (dynamo=False), which still works in torch 2.13 but warns that it is deprecated."""
    batch = torch.export.Dim("batch", min=1)
    with quiet():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
        program.save(str(path))
    return "torch.export"


def export_torchscript(model: L.LightningModule, example: Tensor, path: Path) -> str:
    """Write the network to `path` as TorchScript; returns how it was made. Scripted where TorchScript
    compiles its forward (control flow kept), else traced on example points (one path through forward,
    which the check then tries on every validation point)."""
    with quiet():
        try:
            module = model.to_torchscript(method="script")
            how = "scripted"
        except Exception:  # TorchScript's compiler rejects Python it cannot compile with many error types
            module = model.to_torchscript(method="trace", example_inputs=example)
            how = "traced"
        torch.jit.save(module, str(path))
    return how


def onnx_outputs(path: Path, x: Tensor) -> list[Tensor]:
    import onnxruntime  # here: --format torchscript works without the export extra

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would break the one-line report
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(output) for output in session.run(None, {session.get_inputs()[0].name: x.numpy()})]


def torchscript_outputs(path: Path, x: Tensor) -> list[Tensor]:
    with quiet(), torch.no_grad():
        return tensors(torch.jit.load(str(path), map_location="cpu")(x))


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript}
READERS = {"onnx": onnx_outputs, "torchscript": torchscript_outputs}


def tensors(output: object) -> list[Tensor]:
    """A network's output, a tensor or (nested) tuples or lists of them, as a flat list of tensors."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [tensor for item in output for tensor in tensors(item)]
    raise ExportError(f"the network's forward returns {type(output).__name__}, not tensors")


def compare(exported: list[Tensor], expected: list[Tensor]) -> tuple[float, bool]:
    """The largest absolute difference between the exported file's outputs and the network's, and whether
    every one is within TOLERANCE * max(1, |output|); an ExportError where their number or shapes differ."""
    shapes = [tuple(t.shape) for t in exported], [tuple(t.shape) for t in expected]
    if shapes[0] != shapes[1]:
        raise ExportError(f"the exported file's outputs have shapes {shapes[0]}, the network's {shapes[1]}")
    largest, within = 0.0, True
    for a, b in zip(exported, expected):
        difference = (a.double() - b.double()).abs()
        if difference.numel():
            largest = max(largest, difference.max().item())
            bound = TOLERANCE * b.double().abs().clamp_min(1)
            within &= bool((difference <= bound).all())  # a NaN is not <= anything: it fails
    return largest, within


def export(model: L.LightningModule, x: Tensor, format: str, output: str | Path) -> tuple[str, float, int]:
    """Write `model` to `output` in `format` and check the file's outputs on points `x` against the
    model's; returns how it was made, the largest absolute difference and the points checked. The file is
    written whole or not at all: a failed export or check (ExportError) leaves none, nor does a failed
    write (OSError)."""
    with torch.no_grad():
        expected = tensors(model(x))
    with atomic_path(output) as temporary:  # the check reads the temporary: only a checked file is renamed
        try:
            how = EXPORTERS[format](model, x[:EXAMPLE_POINTS], temporary)
        except OSError:
            raise
        except Exception as error:  # the exporters fail in many types (torch.export's, onnxscript's, jit's)
            reason = " ".join(str(error).split()[:40]) or type(error).__name__
            raise ExportError(f"cannot export {type(model).__name__} to {format}: {reason}") from None
        try:
            exported = READERS[format](temporary, x)
        except Exception as error:  # onnxruntime's and torch.jit's errors on a file they cannot run
            reason = " ".join(str(error).split()[:40]) or type(error).__name__
            raise ExportError(f"the exported {format} file does not run on the validation points: {reason}") from None
        difference, within = compare(exported, expected)
        if not within:
            raise ExportError(
                f"the exported {format} file's outputs differ from the checkpoint network's by up to "
                f"{difference:.3g} on the validation points (allowed: {TOLERANCE:g} x max(1, |output|)); "
                "nothing written"
            )
    return how, difference, len(x)


def check_packages(format: str) -> None:
    """Refuse --format onnx where its packages are not installed, before loading anything."""
    missing = [name for name in ONNX_PACKAGES if format == "onnx" and importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"--format onnx needs {', '.join(missing)}, not installed: pip install 'mlnet_lightning[export]'"
        )


def check_output(path: str) -> None:
    """Refuse an --output that cannot be written before any work: a folder, or in a folder that is not there."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--output {path}: {os.strerror(errno.EISDIR)}")
    if not target.parent.exists():
        raise ValueError(f"--output {path}: its folder {target.parent} does not exist")
    if not target.parent.is_dir():
        raise ValueError(f"--output {path}: {target.parent} is not a folder")


def main(argv: list[str] | None = None) -> int:
    """export.py: the network of a checkpoint written by train.py as an ONNX or TorchScript file mapping
    (N, 2) float32 points to the network's outputs, checked against the checkpoint on its validation points."""
    parser = ArgumentParser(prog="export.py", description=main.__doc__, exit_on_error=False)
    parser.add_argument("--ckpt", type=str, required=True, help=CKPT_HELP)
    parser.add_argument("--format", type=str, choices=FORMATS, required=True, help="onnx or torchscript")
    parser.add_argument("--output", type=str, required=True, help="the file to write")
    try:
        args = parser.parse_args(argv)
        check_packages(args.format)
        check_output(args.output)
        checkpoint = checkpoint_path(args.ckpt)  # `last`: the newest run's, as evaluate.py and predict.py take it
        model, data = load_from_working_directory(checkpoint)
        how, difference, points = export(model, data.x_val, args.format, args.output)
    except (ArgumentError, ValueError, OSError) as error:
        if isinstance(error, OSError):  # atomic_path's: the folder refused the file
            error = f"cannot write {args.output}: {error.strerror or error}"
        print_error("export.py", error)
        return 2
    except ExportError as error:
        print_error("export.py", error)
        return 1
    source = f" from {checkpoint}" if checkpoint != args.ckpt else ""  # which one `last` found
    print(
        f"export.py: wrote {args.output} ({args.format}, {how}){source}; max abs difference from the checkpoint "
        f"{difference:.3g} on {points} validation points"
    )
    return 0
