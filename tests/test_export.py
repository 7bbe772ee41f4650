"""export.py: every network of the project, and one of a user's own, as ONNX and TorchScript files that compute
what its checkpoint does; a bad input, or a file that would not, is refused in one line with nothing written."""

import re
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest
import torch

from mlnet_lightning import export
from mlnet_lightning.checkpoints import load_run
from mlnet_lightning.export import main
from mlnet_lightning.models import MODELS
from tests.conftest import ONE_THREAD_ENV, ROOT, train

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-5
REPORT = re.compile(
    r"export\.py: wrote (\S+) \((\w+), [\w.]+\)(?: from \S+)?; .* checkpoint (\S+) on (\d+) validation points"
)
# A network of a user's own, in a file outside the package (docs/extending.md).
USER_NETWORK = """
import torch
from torch import Tensor, nn

from mlnet_lightning.models import TutorialModule


class SquaresNet(TutorialModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        torch.manual_seed(self.hparams.seed)
        self.linear = nn.Linear(2 * self.hparams.num_features, self.hparams.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.cat([x, x**2], dim=-1))
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """last.ckpt of a short run of each built-in network and of the user's, trained once for the module, in
    train.py's default folder; the user's file sits in the folder that export.py runs from, as evaluate.py
    needs it."""
    root = tmp_path_factory.mktemp("export")
    runs = root / "lightning_logs"
    short = ("--max_epochs", "20", "--pictures", "false")
    train(runs, "--model", "all", *short)
    train(runs, "--model", "mlp", *short)
    (root / "squares_net.py").write_text(USER_NETWORK)
    train(runs, "--model", f"{root / 'squares_net.py'}:SquaresNet", *short)
    found = {path.parent.parent.parent.name: path for path in runs.glob("*/version_0/checkpoints/last.ckpt")}
    assert set(found) == {*MODELS, "squaresnet"}
    return found


def random_points(count: int) -> torch.Tensor:
    return torch.randn(count, 2, generator=torch.Generator().manual_seed(count)) * 3


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["points"]
    (output,) = session.run(None, {"points": x.numpy()})
    return torch.from_numpy(output)


def run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.jit.load(str(path))(x)


RUNTIMES = {"onnx": run_onnx, "torchscript": run_torchscript}


def check_file(checkpoint: Path, format: str, path: Path) -> float:
    """The exported file computes the checkpoint network's outputs, on its validation points and on batches of
    other sizes (the file takes any N); returns the largest difference on the validation points."""
    model, data = load_run(checkpoint)
    differences = []
    for x in (data.x_val, random_points(1), random_points(1000)):
        with torch.no_grad():
            expected = model(x)
        exported = RUNTIMES[format](path, x)
        assert exported.dtype == torch.float32 and exported.shape == expected.shape
        difference = (exported.double() - expected.double()).abs()
        # export.py's tolerance: absolute up to 1 (probabilities), relative beyond (logits in the hundreds)
        assert (difference <= TOLERANCE * expected.double().abs().clamp_min(1)).all()
        differences.append(difference.max().item())
    return differences[0]


def check_report(line: str, output: Path, format: str, difference: float) -> None:
    """The one line: the file written and the largest difference, as the test measures it."""
    report = REPORT.fullmatch(line)
    assert report, line
    assert report[1] == str(output) and report[2] == format and report[4] == "250"
    assert float(report[3]) == pytest.approx(difference, rel=1e-2, abs=1e-12)


def command(checkpoint: Path | str, format: str, output: Path | str) -> list[str]:
    return ["--ckpt", str(checkpoint), "--format", format, "--output", str(output)]


@pytest.fixture(scope="module")
def script_runs(checkpoints, tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """scripts/export.py in fresh processes, as a user runs it: the user's network to ONNX (from the folder of
    its file) and a missing checkpoint; both at once, each process spending seconds importing torch (the
    torchscript export of the user's network runs in-process, to keep the module fast)."""
    out = tmp_path_factory.mktemp("script_runs")
    cwd = checkpoints["squaresnet"].parents[4]
    runs = {
        "onnx": command(checkpoints["squaresnet"], "onnx", out / "squaresnet.onnx"),
        "missing": command(out / "none.ckpt", "onnx", out / "none.onnx"),
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "export.py"), *args],
            cwd=cwd,
            env=ONE_THREAD_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in runs.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return out, results


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_network_exports_to_a_file_that_computes_what_its_checkpoint_does(
    checkpoints, tmp_path, capsys, name, format
):
    output = tmp_path / f"{name}{SUFFIXES[format]}"
    assert main(command(checkpoints[name], format, output)) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    (line,) = captured.out.splitlines()
    assert [path.name for path in tmp_path.iterdir()] == [output.name]  # no temporary file left beside it
    check_report(line, output, format, check_file(checkpoints[name], format, output))


def test_a_users_own_network_exports_to_onnx_through_the_script(checkpoints, script_runs):
    out, results = script_runs
    result = results["onnx"]
    assert result.returncode == 0 and result.stderr == "", result.stderr
    (line,) = result.stdout.splitlines()
    output = out / "squaresnet.onnx"
    check_report(line, output, "onnx", check_file(checkpoints["squaresnet"], "onnx", output))


def test_a_users_own_network_exports_to_torchscript_and_ckpt_last_finds_it(checkpoints, tmp_path, capsys, monkeypatch):
    """From the folder of its file, as for evaluate.py; `--ckpt last` is the newest run's, the user's (trained
    last), as evaluate.py takes it."""
    monkeypatch.chdir(checkpoints["squaresnet"].parents[4])
    output = tmp_path / "squaresnet.pt"
    assert main(command("last", "torchscript", output)) == 0
    (line,) = capsys.readouterr().out.splitlines()
    # its forward compiles: TorchScript keeps it whole
    assert line.startswith(f"export.py: wrote {output} (torchscript, scripted) from lightning_logs/squaresnet/")
    check_report(line, output, "torchscript", check_file(checkpoints["squaresnet"], "torchscript", output))


def test_the_script_refuses_a_missing_checkpoint_in_one_line(script_runs):
    out, results = script_runs
    result = results["missing"]
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"export.py: error: checkpoint {out / 'none.ckpt'} does not exist\n"
    assert not (out / "none.onnx").exists()


@pytest.mark.parametrize("name", list(MODELS))
def test_to_torchscript_scripts_every_builtin_network_as_its_forward(name):
    model = MODELS[name]().eval()
    scripted = model.to_torchscript()  # Lightning's default: method="script"
    assert isinstance(scripted, torch.jit.ScriptModule)
    x = random_points(250)
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))


def bad_inputs(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad input's command and a part of its message."""
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "model.onnx"
    return {
        "missing checkpoint": (command(tmp_path / "none.ckpt", "onnx", out), "none.ckpt does not exist"),
        "unreadable checkpoint": (command(tmp_path / "garbage.ckpt", "onnx", out), "cannot read checkpoint"),
        "not train.py's": (command(tmp_path / "foreign.ckpt", "onnx", out), "not a checkpoint written by train.py"),
        "unknown format": (command(checkpoint, "tflite", out), "invalid choice: 'tflite'"),
        "output a folder": (command(checkpoint, "onnx", tmp_path / "folder"), "Is a directory"),
        "no such folder": (command(checkpoint, "onnx", tmp_path / "none" / "m.onnx"), "none does not exist"),
        "a file as folder": (command(checkpoint, "torchscript", tmp_path / "a_file" / "m.pt"), "is not a folder"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing checkpoint",
        "unreadable checkpoint",
        "not train.py's",
        "unknown format",
        "output a folder",
        "no such folder",
        "a file as folder",
    ],
)
def test_a_bad_input_is_one_line_with_exit_2_and_nothing_written(checkpoints, tmp_path, capsys, case):
    args, message = bad_inputs(tmp_path, checkpoints["linear"])[case]
    before = sorted(tmp_path.rglob("*"))
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("export.py: error: ") and message in captured.err, captured.err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("format", FORMATS)
def test_a_file_that_fails_the_check_is_exit_1_and_not_written(checkpoints, tmp_path, capsys, monkeypatch, format):
    """A file whose outputs differ is not kept: one already at --output stays as it was."""
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference passes
    output = tmp_path / f"model{SUFFIXES[format]}"
    output.write_text("the old file")
    assert main(command(checkpoints["sequential"], format, output)) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"export.py: error: the exported {format} file's outputs differ")
    assert output.read_text() == "the old file" and [path.name for path in tmp_path.iterdir()] == [output.name]
