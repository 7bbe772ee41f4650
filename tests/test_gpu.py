"""On a CUDA GPU (`pytest -m gpu`; skipped where there is none): replayed epochs against eager ones, the
fallbacks on real captures, mini-batches, mixed precision, the fast path, stacked seeds and issue 11's
Lightning-native conformance tests. Then, on any
machine, the dry run of the prepared GPU check (scripts/gpu_check.sh, docs/gpu.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from functools import partial

import pytest
import torch

from mlnet_lightning.data import BlobData
from mlnet_lightning.models import MODELS, Sequential
from tests.conftest import ONE_THREAD_ENV, ROOT, train
from tests.test_replay import (
    REPLAYED,
    Alternating,
    Syncing,
    assert_same_fit,
    fallback_warnings,
    fit,
    replayer_of,
    stacked_copies,
)

ACCELERATOR = "gpu"
on_gpu = partial(fit, accelerator=ACCELERATOR)
# tests/test_lightning_native.py's tests that compare nothing with a loop on the CPU: epochs, steps,
# validation and checkpoint cadence, early stopping, loggers, a user's epoch callback, the four stages,
# and the fast path on and off (bitwise).
ON_ANY_DEVICE = (
    "max_epochs_is or max_steps or check_val or model_checkpoint or early_stopping or loggers_get or "
    "epoch_callback or validate_and_test or predict or fast_path_changes_nothing"
)


def needs_gpu(test):
    """The `gpu` marker (`pytest -m gpu` runs these), and a skip with its reason where CUDA is absent."""
    no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: scripts/gpu_check.sh")
    return pytest.mark.gpu(no_cuda(test))


@pytest.mark.parametrize("network", [*MODELS.values(), stacked_copies], ids=[*MODELS, "seeds"])
@needs_gpu
def test_replayed_epochs_equal_eager_epochs(network):
    replayed = on_gpu(network())
    replayer = replayer_of(replayed[1])
    assert not replayer.failed and replayer.replayed == REPLAYED
    assert_same_fit(replayed, on_gpu(network(), replayed=False), atol=1e-6)


def fit_warned(model) -> tuple[tuple, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = on_gpu(model)
    return result, fallback_warnings(caught)


@needs_gpu
def test_a_capture_that_fails_leaves_an_eager_run():
    replayed, messages = fit_warned(Syncing())
    assert len(messages) == 1 and messages[0].startswith("Syncing: capturing its epoch failed")
    assert replayer_of(replayed[1]).failed
    assert_same_fit(replayed, on_gpu(Syncing(), replayed=False), atol=1e-6)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert_same_fit(on_gpu(Sequential()), on_gpu(Sequential(), replayed=False), atol=1e-6)  # CUDA still sound


@needs_gpu
def test_a_graph_that_replays_something_else_is_not_trusted():
    (model, trainer, logger), messages = fit_warned(Alternating())
    assert len(messages) == 1 and messages[0].startswith("Alternating: its replayed epochs differ")
    assert replayer_of(trainer).failed and replayer_of(trainer).replayed == 0
    # Every epoch trained ran its Python (none replayed); beside them, the capture and three validations.
    assert model.calls == trainer.global_step + 1 + 3
    assert torch.isfinite(torch.tensor(logger.series("train/loss"))).all()


@needs_gpu
def test_mini_batches_train_eagerly():
    on_cuda = on_gpu(Sequential(), epochs=20, data=BlobData(batch_size=100))
    assert replayer_of(on_cuda[1]) is None and on_cuda[1].global_step == 20 * 8
    assert_same_fit(on_cuda, fit(Sequential(), epochs=20, data=BlobData(batch_size=100)), atol=1e-4)


@pytest.mark.parametrize("name", ["scratch", "sequential", "mlp"])
@needs_gpu
def test_fast_path_on_and_off_give_the_same_fit(name):
    fast = on_gpu(MODELS[name]())
    slow_model = MODELS[name]()
    slow_model.fast_path = False
    assert replayer_of(fast[1]).replayed == REPLAYED
    assert_same_fit(fast, on_gpu(slow_model), atol=1e-6)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@needs_gpu
def test_mixed_precision_trains(tmp_path, precision):
    common = ("--model", "linear", "--logits", "true", "--max_epochs", "1000", "--accelerator", ACCELERATOR)
    mixed = train(tmp_path / "mixed", *common, "--precision", precision)["linear"]
    full = train(tmp_path / "full", *common)["linear"]
    assert mixed["epochs"] == 1000 and mixed["device"].startswith("cuda")
    assert mixed["final_loss"] == pytest.approx(full["final_loss"], abs=0.02)
    assert mixed["val_acc"] == pytest.approx(full["val_acc"], abs=0.02) and full["val_acc"] > 0.85


@needs_gpu
def test_a_thousand_stacked_seeds(tmp_path):
    common = ("--model", "sequential", "--max_epochs", "500", "--accelerator", ACCELERATOR)
    stacked = train(tmp_path / "stacked", *common, "--seeds", "1000")["sequential"]
    one = train(tmp_path / "one", *common)["sequential"]
    assert len(stacked["copies"]["seed"]) == 1000
    assert stacked["copies"]["final_loss"][0] == pytest.approx(one["final_loss"], abs=1e-5)
    assert stacked["copies"]["val_acc"][0] == pytest.approx(one["val_acc"], abs=1e-3)


def test_the_gpu_check_dry_run(tmp_path):
    """What the GPU check runs, on this machine's CPU and shortened: it ends with its table, all ok, and
    writes it where --output says (not into the checkout)."""
    output = tmp_path / "gpu-check.json"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--output", str(output)],
        cwd=ROOT, env={**ONE_THREAD_ENV, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout[result.stdout.index("check") :].splitlines()
    for name in ("scratch", "functional", "parameter", "linear", "sequential"):
        assert any(line.startswith(f"main command, {name}") and " ok " in line for line in table), table
        assert any(line.startswith(f"{name} replayed vs eager") and " ok " in line for line in table), table
    assert any(line.startswith("gpu tests") for line in table)
    assert not any(" FAIL " in line for line in table)
    assert len(json.loads(output.read_text())["rows"]) == len(table) - 1  # every row but the header


@needs_gpu
def test_lightning_native_conformance_on_cuda():
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_lightning_native.py"]
    env = {**os.environ, "MLNET_TEST_ACCELERATOR": ACCELERATOR}
    result = subprocess.run([*command, "-k", ON_ANY_DEVICE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]
