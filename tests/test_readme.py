"""The README's commands and Python example, run exactly as written."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def readme_block(heading: str) -> str:
    """The first ```python block under `heading` in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_from_python_section_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its runs land in ./lightning_logs
    names: dict = {}
    exec(compile(readme_block("## From Python"), "README.md", "exec"), names)
    trainer, validated, tested, probabilities = (names[k] for k in ("trainer", "validated", "tested", "probabilities"))
    assert trainer.current_epoch == 1000 and trainer.global_step == 1000
    assert set(validated) == {"val/loss", "val/acc"} and validated["val/acc"] > 0.85  # an untrained network: about 0.25
    assert set(tested) == {"test/loss", "test/acc"} and tested["test/acc"] == validated["val/acc"]  # held-out split
    assert probabilities.shape == (250, 4)
    assert torch.allclose(probabilities.sum(-1), torch.ones(250), atol=1e-5)
    assert f"val acc {validated['val/acc']:.3f}" in capsys.readouterr().out
    assert list((tmp_path / "lightning_logs").glob("version_0/checkpoints/*.ckpt"))


def fenced(heading: str, language: str) -> list[str]:
    """The ```language blocks of README.md's section `heading`."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```", section, flags=re.S | re.M)


def test_the_two_commands_set_up_as_ci_does():
    train, test = (block.strip() for block in fenced("## Two commands", "bash"))
    set_up, _, _ = test.rpartition(" && ")
    assert train.startswith(f"{set_up} && .venv/bin/python scripts/train.py")
    assert test in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command itself


def test_your_first_hour_runs_as_written(tmp_path):
    """The README's train command (without its set-up, which CI runs), then every line of "Your first hour", in
    order, each in a process of its own, in a folder of the user's with the README's my_net.py in it."""
    for folder in ("scripts", "configs"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    [code] = fenced("## Your first hour", "python")
    (tmp_path / "my_net.py").write_text(code)
    (tmp_path / "points.csv").write_text("x1,x2\n0.5,0.2\n-3,4\n")
    train = fenced("## Two commands", "bash")[0].strip().rpartition(" && ")[2]
    [hour] = fenced("## Your first hour", "bash")
    outputs = {}
    for line in [train, *hour.strip().splitlines()]:
        program, *args = shlex.split(line)
        assert program == ".venv/bin/python"
        done = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        outputs[line] = done.stdout
    runs = tmp_path / "lightning_logs"
    assert {path.parent.parent.name for path in runs.glob("*/version_*/summary.json")} >= {
        "scratch", "functional", "parameter", "linear", "sequential", "mlp", "wider"
    }  # fmt: skip
    newest = max((runs / "sequential").glob("version_*"), key=lambda path: int(path.name.split("_")[1]))
    resumed = json.loads((runs / "sequential" / "version_1" / "summary.json").read_text())
    assert resumed["epochs"] == 12_000  # the --logits run, continued
    assert (runs / "compare" / "moons" / "version_0" / "summary.json").is_file()
    evaluated, predicted = (outputs[line] for line in hour.splitlines()[4:6])
    assert "accuracy" in evaluated and predicted.splitlines()[0] == "x1,x2,class,p0,p1,p2,p3"
    assert len(predicted.splitlines()) == 3
    assert (tmp_path / "sequential.onnx").stat().st_size > 0
    assert json.loads((newest / "summary.json").read_text())["copies"]["seed"] == list(range(100))  # --seeds 100


def test_the_search_section_runs_as_written(tmp_path):
    """The README's search command, in a user's folder: trials as runs, the best as a config, the plots."""
    for folder in ("scripts", "configs"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    [command] = fenced("## Search", "bash")
    program, *args = shlex.split(command.strip())
    assert program == ".venv/bin/python"
    done = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    study = tmp_path / "lightning_logs" / "search" / "mlp_BlobData"
    assert len(list(study.glob("trial_*/version_0/summary.json"))) == 12
    assert (study / "best.yaml").is_file() and (study / "history.png").stat().st_size > 0
    assert (tmp_path / "lightning_logs" / "search" / "mlp_BlobData.db").is_file()
    table = done.stdout.splitlines()
    assert table[0].split()[:3] == ["trial", "val_acc", "std"] and "best: trial" in done.stdout
