"""Faults a shared machine or a cluster brings: resumes with another --max_epochs, runs started together,
full disks, every checkpoint usable, requests too big for the machine; each ends in the right numbers
or in one line."""

import json
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlnet_lightning.checkpoints import BestCheckpoint, RunLogger, load_run
from mlnet_lightning.cli import main
from mlnet_lightning.inference import copy_probabilities, evaluate_main, predict_main
from tests.conftest import ONE_THREAD_ENV, ROOT, train

pytestmark = pytest.mark.usefixtures("one_thread")

# Validations every 50 epochs, last.ckpt every 100 and where the run ends: a run of 250 epochs killed at
# its end leaves last.ckpt at epoch 199 (Lightning resumes it by ending that epoch), and a best after it.
CADENCE = ("--check_val_every_n_epoch", "50", "--checkpoint_every", "100", "--pictures", "false")


def run_folder(root: Path, model: str = "linear") -> Path:
    return root / model / "version_0"


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The curves as TensorBoard shows them (a resumed run's purge_step applied), but the HPARAMS metrics,
    which each session writes once."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = [tag for tag in events.Tags()["scalars"] if not tag.startswith("hp/")]
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags}


def outcome(run_dir: Path) -> dict:
    """What a run leaves: its summary (but the time), its curves, its best checkpoint file and what
    last.ckpt records of it."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("fit_seconds")
    bests = sorted(path.name for path in (run_dir / "checkpoints").glob("*best*"))
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    state = last["callbacks"][BestCheckpoint().state_key]
    best = (Path(state["best_model_path"]).name, float(state["best_model_score"]))
    return {"summary": summary, "scalars": scalars(run_dir), "bests": bests, "best": best, "last": last["epoch"]}


def tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(
    ("model", "first", "then", "start", "options"),
    [
        ("linear", 250, 400, "last", ()),  # longer
        ("linear", 250, 400, "best", ()),  # from the best checkpoint, which then gives way to a later best
        ("linear", 250, 400, "last", ("--fast_path", "false")),  # Lightning's loop for every epoch
        ("linear", 250, 400, "last", ("--data.batch_size", "250")),  # three steps an epoch
        ("sequential", 250, 400, "last", ("--lr_scheduler", "ExponentialLR", "--lr_scheduler.gamma", "0.995")),
    ],
)
def test_a_resumed_run_ends_as_the_uninterrupted_one(tmp_path, model, first, then, start, options):
    common = ("--model", model, *CADENCE, *options)
    train(tmp_path / "whole", *common, "--max_epochs", str(then))
    train(tmp_path / "parts", *common, "--max_epochs", str(first))
    run_dir = run_folder(tmp_path / "parts", model)
    ckpt = "last" if start == "last" else str(next((run_dir / "checkpoints").glob("*best*")))
    train(tmp_path / "parts", *common, "--max_epochs", str(then), "--ckpt_path", ckpt)
    resumed, whole = outcome(run_dir), outcome(run_folder(tmp_path / "whole", model))
    assert resumed == whole
    assert [step for step, _ in whole["scalars"]["train/loss"]] == [
        step for step, _ in resumed["scalars"]["train/loss"]
    ]
    assert len(whole["scalars"]["train/loss"]) == then  # one point an epoch, each once


def test_a_run_killed_after_a_later_best_resumes_shorter_keeping_the_checkpoints_best(tmp_path):
    """kill -9 as epoch 249 ends: last.ckpt holds epoch 199, the best file is epoch 249's. Resumed to 210
    epochs, the best at 249 is not reached and the one at 199 is kept, as a 210-epoch run keeps it."""
    common = ("--model", "scratch", *CADENCE)
    train(tmp_path / "whole", *common, "--max_epochs", "210")
    kill = ("--callbacks", "tests.user_callbacks.KillAt", "--callbacks.epoch", "249")
    killed = train_py(*common, "--max_epochs", "250", *kill, "--default_root_dir", str(tmp_path / "parts"))
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    run_dir = run_folder(tmp_path / "parts", "scratch")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 199
    assert [path.name for path in (run_dir / "checkpoints").glob("*best*")] == ["epoch=249-best.ckpt"]
    train(tmp_path / "parts", *common, "--max_epochs", "210", "--ckpt_path", "last")
    assert outcome(run_dir) == outcome(run_folder(tmp_path / "whole", "scratch"))


def test_the_known_case_resumes_exactly(tmp_path):
    """1,500 epochs, then on to 3,000 from last.ckpt (where the first run ended), with the CLI's cadences."""
    common = ("--model", "linear", "--pictures", "false")
    whole = train(tmp_path / "whole", *common, "--max_epochs", "3000")["linear"]
    train(tmp_path / "parts", *common, "--max_epochs", "1500")
    resumed = train(tmp_path / "parts", *common, "--max_epochs", "3000", "--ckpt_path", "last")["linear"]
    assert resumed["final_loss"] == whole["final_loss"] == pytest.approx(0.895121, abs=1e-6)
    assert outcome(run_folder(tmp_path / "parts")) == outcome(run_folder(tmp_path / "whole"))


# `--model all` keeps a run that ended at --max_epochs (tests/test_never_lost.py): fewer epochs are refused.
@pytest.mark.parametrize(("model", "max_epochs"), [("all", "150"), ("linear", "150"), ("linear", "200")])
def test_resuming_to_no_more_epochs_than_the_checkpoint_holds_is_refused_before_anything_is_written(
    tmp_path, capsys, model, max_epochs
):
    train(tmp_path, "--model", "linear", *CADENCE, "--max_epochs", "200")  # last.ckpt holds 200 epochs
    before = tree(tmp_path)
    capsys.readouterr()
    argv = ["--default_root_dir", str(tmp_path), "--model", model, *CADENCE, "--ckpt_path", "last"]
    assert main([*argv, "--max_epochs", max_epochs]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"train.py: error: --max_epochs {max_epochs}: ")
    assert "has trained 200 epochs already; give more than 200" in err
    assert tree(tmp_path) == before  # config.yaml, events, checkpoints; no other network's folder either


def train_py(*args: str, file_size_limit: int | None = None) -> subprocess.Popen:
    """train.py in a process of its own; a write that would make a file larger than `file_size_limit`
    bytes fails there with EFBIG, as on a full disk (SIGXFSZ ignored: it would kill the process)."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--enable_progress_bar", "false", *args]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=ONE_THREAD_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit_file_size if file_size_limit else None,
    )


def test_a_failed_write_ends_in_one_line_and_the_run_resumes_from_its_last_good_checkpoint(tmp_path):
    run = ("--model", "linear", *CADENCE, "--max_epochs", "400")
    train(tmp_path / "whole", *run)
    # 20 kB: the checkpoints (6 kB) fit; the event file outgrows it after a last.ckpt or two.
    failed = train_py(*run, "--default_root_dir", str(tmp_path / "parts"), file_size_limit=20_000)
    out, err = failed.communicate(timeout=300)
    run_dir = run_folder(tmp_path / "parts")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert failed.returncode == 1, err
    assert err.strip() == (
        f"train.py: error: linear: cannot write in {run_dir}: File too large; last good checkpoint: {last}; "
        "free some space and resume with --ckpt_path last"
    )
    assert not (run_dir / "summary.json").exists()
    assert torch.load(last, weights_only=True)["epoch"] in (99, 199, 299)
    train(tmp_path / "parts", *run, "--ckpt_path", "last")  # the space is back
    assert outcome(run_dir) == outcome(run_folder(tmp_path / "whole"))


def test_loggers_claim_their_versions_atomically(tmp_path):
    """Eight runs asking for a new version at the same instant get eight folders."""
    start = threading.Barrier(8)
    versions = []

    def claim() -> None:
        logger = RunLogger(tmp_path, name="linear")
        start.wait()
        versions.append(logger.version)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == list(range(8))
    assert sorted(path.name for path in (tmp_path / "linear").iterdir()) == [f"version_{v}" for v in range(8)]


def test_two_runs_started_together_into_one_root_get_a_folder_each(tmp_path):
    runs = [
        train_py("--model", "linear", "--max_epochs", "50", "--seed", str(seed), "--default_root_dir", str(tmp_path))
        for seed in (1, 2)
    ]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()
    seeds = {yaml_seed(path) for path in (tmp_path / "linear").glob("version_*/config.yaml")}
    summaries = list((tmp_path / "linear").glob("version_*/summary.json"))
    assert sorted(path.parent.name for path in summaries) == ["version_0", "version_1"]
    assert seeds == {1, 2}


def yaml_seed(config: Path) -> int:
    return next(int(line.split(":")[1]) for line in config.read_text().splitlines() if line.startswith("seed:"))


@pytest.fixture(scope="module")
def stacked_run(one_thread, tmp_path_factory) -> Path:
    """A run of 6 stacked copies (3 seeds at 2 rates): its folder."""
    root = tmp_path_factory.mktemp("stacked")
    train(root, "--model", "linear", "--seeds", "3", "--lrs", "0.1,0.2", *CADENCE, "--max_epochs", "100")
    return run_folder(root)


def points_csv(path: Path, x: torch.Tensor, y: torch.Tensor | None = None) -> Path:
    rows = [[*map(str, point), *([str(label)] if y is not None else [])] for point, label in zip(x.tolist(), y or x)]
    path.write_text("\n".join(",".join(row) for row in rows) + "\n")
    return path


@pytest.mark.parametrize("kind", ["last.ckpt", "epoch=99-best.ckpt"])
def test_evaluate_reports_every_stacked_copy_and_their_mean(stacked_run, capsys, kind):
    copies = json.loads((stacked_run / "summary.json").read_text())["copies"]
    capsys.readouterr()
    assert evaluate_main(["--ckpt", str(stacked_run / "checkpoints" / kind)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("(6 stacked copies of Linear)")
    header, *rows = [line.split() for line in lines[2:9]]
    assert header == ["copy", "seed", "lr", "loss", "accuracy"]
    assert [(int(row[0]), int(row[1]), float(row[2])) for row in rows] == [
        (i, seed, lr) for i, (seed, lr) in enumerate(zip(copies["seed"], copies["lr"]))
    ]
    assert [float(row[3]) for row in rows] == pytest.approx(copies["val_loss"], abs=1e-6)
    assert [float(row[4]) for row in rows] == pytest.approx(copies["val_acc"], abs=1e-4)
    assert float(lines[-1].split()[1]) == pytest.approx(sum(copies["val_acc"]) / 6, abs=1e-4)


def test_predict_uses_one_stacked_copy_or_their_mean(stacked_run, tmp_path):
    checkpoint = str(stacked_run / "checkpoints" / "last.ckpt")
    model, data = load_run(checkpoint)
    points = points_csv(tmp_path / "val.csv", data.x_val)
    copies = json.loads((stacked_run / "summary.json").read_text())["copies"]
    for copy in (0, 4):
        out = tmp_path / f"copy{copy}.csv"
        assert (
            predict_main(["--ckpt", checkpoint, "--input", str(points), "--output", str(out), "--copy", str(copy)]) == 0
        )
        classes = torch.tensor([int(line.split(",")[2]) for line in out.read_text().splitlines()[1:]])
        assert classes.eq(data.y_val).float().mean().item() == pytest.approx(copies["val_acc"][copy], abs=1e-6)
    out = tmp_path / "mean.csv"
    assert predict_main(["--ckpt", checkpoint, "--input", str(points), "--output", str(out)]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    probabilities = torch.tensor([[float(p) for p in row[3:]] for row in rows])
    expected = torch.stack([copy_probabilities(model, data.x_val)[i] for i in range(6)]).mean(0)
    torch.testing.assert_close(probabilities, expected, atol=1e-7, rtol=1e-6)
    assert [int(row[2]) for row in rows] == expected.argmax(-1).tolist()


PROGRAMS = {"train.py": main, "predict.py": predict_main}


@pytest.mark.parametrize(
    ("program", "args", "message"),
    [
        ("train.py", ["--config", "{tmp}/missing.yaml"], "--config: File does not exist: '{tmp}/missing.yaml'"),
        ("train.py", ["--config", "{tmp}/list.yaml"], "--config: the file is not a YAML mapping of options"),
        ("train.py", ["--max_epochs", "many"], "--max_epochs: Expected a <class 'int'> (given many)"),
        ("train.py", ["--optimizer", "Adam", "--optimizer.lr", "x"],
         "--optimizer.lr: Expected a <class 'float'> (given x)"),
        ("train.py", ["--data.n_samples", "1.5"], "--data.n_samples: Expected a <class 'int'>. Got value: 1.5"),
        ("predict.py", ["--ckpt", "{single}", "--input", "{tmp}/p.csv", "--output", "{tmp}/o.csv", "--copy", "1"],
         "--copy 1: {single} holds one network, not stacked copies"),
        ("predict.py", ["--ckpt", "{stacked}", "--input", "{tmp}/p.csv", "--output", "{tmp}/o.csv", "--copy", "6"],
         "--copy 6: the checkpoint holds copies 0 to 5"),
    ],
)  # fmt: skip
def test_every_error_line_names_its_reason(stacked_run, tmp_path, capsys, program, args, message):
    single = tmp_path / "single"
    train(single, "--model", "linear", *CADENCE, "--max_epochs", "100")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    points_csv(tmp_path / "p.csv", torch.zeros(2, 2))
    names = {"tmp": tmp_path, "single": run_folder(single) / "checkpoints" / "last.ckpt"}
    names["stacked"] = stacked_run / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert PROGRAMS[program]([arg.format(**names) for arg in args]) == 2
    assert capsys.readouterr().err == f"{program}: error: {message.format(**names)}\n"


@pytest.mark.parametrize("copies", [("--seeds", "100000000"), ("--seeds", "10000000", "--lrs", "0.1,0.2,0.3")])
def test_copies_beyond_the_memory_are_refused_at_once(tmp_path, capsys, copies):
    started = time.monotonic()
    argv = ["--default_root_dir", str(tmp_path / "runs"), "--model", "linear", *copies, "--data.n_samples", "100000"]
    assert main(argv) == 2
    assert time.monotonic() - started < 30  # building them would take days
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("train.py: error: ")
    assert "stacked copies of Linear on 75000 points need about" in err and "ask for at most" in err
    assert not (tmp_path / "runs").exists()


def test_a_run_stopped_at_an_epoch_end_resumes_to_any_larger_number_of_epochs(tmp_path, capsys):
    """SIGTERM's checkpoint is written where an epoch ended, not at a validation."""
    run = ("--model", "linear", *CADENCE)
    stopped = train_py(*run, "--max_epochs", "1000000", "--default_root_dir", str(tmp_path / "parts"))
    last = run_folder(tmp_path / "parts") / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists():
        assert stopped.poll() is None and time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=120) == 143
    epochs = torch.load(last, weights_only=True)["epoch"]
    before = tree(tmp_path)
    argv = ["--default_root_dir", str(tmp_path / "parts"), "--enable_progress_bar", "false", *run]
    capsys.readouterr()
    assert main([*argv, "--max_epochs", str(epochs), "--ckpt_path", "last"]) == 2
    assert f"has trained {epochs} epochs already; give more than {epochs}" in capsys.readouterr().err
    assert tree(tmp_path) == before
    more = str(epochs + 150)  # past the next last.ckpt, which both runs then write at the same epoch
    train(tmp_path / "parts", *run, "--max_epochs", more, "--ckpt_path", "last")
    train(tmp_path / "whole", *run, "--max_epochs", more)
    assert outcome(run_folder(tmp_path / "parts")) == outcome(run_folder(tmp_path / "whole"))
