"""The README's Python example, run exactly as written."""

import re
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
