"""scripts/search.py: an Optuna search whose trials are normal train.py runs, its study in SQLite or PostgreSQL;
stopped or killed, the same command resumes it; processes share a study; bad input is one line, exit 2."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from mlnet_lightning.fastpath.bulk import next_observed_by
from mlnet_lightning.search import main, pruning_callback
from tests.conftest import ONE_THREAD_ENV, ROOT

# Stacked seeds for SGD, one run a seed for Adam; tiny trials (100 epochs, a validation every 10).
SMALL_SPACE = {"optimizer": {"choices": ["SGD", "Adam"]}, "lr": {"low": 0.001, "high": 1.0, "log": True}}
SMALL_SPACE["hidden"] = {"choices": [[2], [8]]}
STUDY = "mlp_BlobData"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def write_space(folder: Path, space: dict = SMALL_SPACE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def command(root: Path, space: Path, *args: str) -> list[str]:
    return [*("--space", str(space), "--default_root_dir", str(root)), *args]


def start(root: Path, space: Path, *args: str) -> subprocess.Popen:
    argv = [sys.executable, str(ROOT / "scripts" / "search.py"), *command(root, space, *args)]
    return subprocess.Popen(
        argv, cwd=ROOT, env=ONE_THREAD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def study_of(root: Path, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=storage or f"sqlite:///{root / 'search' / f'{STUDY}.db'}")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 - the database or the study is not there yet
            pass
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def summary(run: Path) -> dict:
    found = json.loads((run / "summary.json").read_text())
    found.pop("fit_seconds")
    return found


def test_a_search_end_to_end_prunes_tabulates_and_its_best_reruns_to_the_same_numbers(tmp_path, capsys):
    root = tmp_path / "logs"
    space = write_space(tmp_path)
    args = ("--trials", "8", "--max_epochs", "100", "--seeds", "2", "--jobs", "1", "--sampler_seed", "0")
    assert main(command(root, space, *args)) == 0
    done = SimpleNamespace(**dict(zip(("stdout", "stderr"), capsys.readouterr())))
    assert len(done.stderr.splitlines()) == 1 + 8  # the study's line, then one a trial
    study = study_of(root)
    trials = finished(study)
    assert len(trials) == len(study.trials) == 8
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "a hopeless trial is pruned"
    folder = root / "search" / STUDY
    for trial in trials:
        runs = sorted((folder / f"trial_{trial.number}").glob("version_*"))
        first = runs[0]
        assert {"config.yaml", "hparams.yaml", "summary.json"} <= {p.name for p in first.iterdir()}
        assert (first / "checkpoints" / "last.ckpt").exists()
        if trial in pruned:  # it ended at a validation, as EarlyStopping ends a run
            assert summary(first)["epochs"] == trial.last_step + 1 < 100
            continue
        if trial.params["optimizer"] == "SGD":  # plain SGD: the two seeds stacked in one run
            [run] = runs
            copies = summary(run)["copies"]
            assert copies["seed"] == [0, 1]
            assert trial.value == pytest.approx(sum(copies["val_acc"]) / 2)
        else:  # Adam: a run a seed
            assert [yaml.safe_load((r / "config.yaml").read_text())["seed"] for r in runs] == [0, 1]
            accuracies = [summary(r)["val_acc"] for r in runs]
            assert trial.value == pytest.approx(sum(accuracies) / 2)
            assert trial.user_attrs["val_acc_std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2)
        assert summary(runs[0])["epochs"] == 100
    # TensorBoard: every run's curves and its HPARAMS.
    events = EventAccumulator(str(folder / f"trial_{trials[0].number}" / "version_0"))
    events.Reload()
    assert {"train/loss_mean", "val/acc_mean"} <= set(events.Tags()["scalars"]) or {"train/loss", "val/acc"} <= set(
        events.Tags()["scalars"]
    )
    content = events.PluginTagToContent("hparams")
    hparams = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams
    assert hparams["max_epochs"].number_value == 100
    # The table: the complete trials, best first, with their spread.
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["trial", "val_acc", "std", "epochs", "seconds", "optimizer", "lr", "hidden"]
    complete = sorted((t for t in trials if t not in pruned), key=lambda t: (-t.value, t.number))
    for line, trial in zip(lines[1:], complete):
        number, value, std, epochs = line.split()[:4]
        assert (int(number), float(value), int(epochs)) == (trial.number, round(trial.value, 4), 100)
        assert float(std) == round(trial.user_attrs["val_acc_std"], 4)
    assert f"8 trials ({len(complete)} complete, {len(pruned)} pruned)" in done.stdout
    plots = EventAccumulator(str(folder / "plots"))
    plots.Reload()
    assert set(plots.Tags()["images"]) == {"search/history", "search/importances"}
    assert (folder / "history.png").stat().st_size > 10_000 and (folder / "importances.png").exists()
    # The best trial's config reruns it to the same numbers.
    best = complete[0]
    assert f"best: trial {best.number}, rerun: train.py --config {folder / 'best.yaml'}" in done.stdout
    rerun_root = tmp_path / "rerun"
    rerun = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(folder / "best.yaml"),
         "--default_root_dir", str(rerun_root), "--enable_progress_bar", "false"],
        cwd=ROOT, env=ONE_THREAD_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    [again] = rerun_root.glob("mlp/version_0")
    assert summary(again) == summary(folder / f"trial_{best.number}" / "version_0")


def test_processes_share_a_sqlite_study_and_killed_or_stopped_it_resumes_to_the_trials_asked(tmp_path):
    """Two commands on one study: one with two worker processes (one a core), one with one. The second is killed
    (SIGKILL) in a trial, the first stopped (SIGTERM: its workers stop at an epoch's end, 143); the same command
    again finishes the study with exactly the trials asked."""
    root = tmp_path / "logs"
    space = write_space(tmp_path)
    args = ("--trials", "6", "--max_epochs", "1000", "--prune", "false")
    first, second = start(root, space, *args, "--jobs", "2"), start(root, space, *args, "--jobs", "1")

    def processes(*states: optuna.trial.TrialState) -> list[int]:
        trials = study_of(root).get_trials(deepcopy=False, states=states or FINISHED)
        return [t.user_attrs["process"][1] for t in trials if "process" in t.user_attrs]

    running = optuna.trial.TrialState.RUNNING

    def both_at_work() -> bool:
        return processes() != [] and second.pid in processes(running) and len(set(processes(running))) >= 2

    wait_for(both_at_work, second)  # a trial of each command running, one or more trials finished
    second.kill()  # in a trial: the trial is left RUNNING, its process gone
    second.wait()
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 143, err
    assert err.splitlines()[-1] == "search.py: stopped by SIGTERM; the same command resumes the study"
    assert out == ""
    study = study_of(root)
    before = len(finished(study))
    assert 1 <= before < 6
    again = start(root, space, *args, "--jobs", "2")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"{before} of 6 trials done" in err.splitlines()[0]
    study = study_of(root)
    assert len(finished(study)) == 6 and len(set(processes())) >= 2
    # The killed command's trial was failed at once: its process was gone.
    assert [t.state.name for t in study.trials if t.user_attrs.get("process", [0, 0])[1] == second.pid][-1] == "FAIL"
    assert f"6 trials (6 complete, 0 pruned); this command: {6 - before} in" in out


def postgres_binaries() -> Path | None:
    for folder in [
        *(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep)),
        *Path("/usr/lib/postgresql").glob("*/bin"),
    ]:
        if all((folder / name).exists() for name in ("initdb", "postgres")):
            return folder
    return None


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of the system's packages on 127.0.0.1, started for these tests (as an unprivileged
    user when run as root: initdb refuses root)."""
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server binaries (initdb, postgres) are not installed")
    pytest.importorskip("psycopg", reason="psycopg, the PostgreSQL driver, is not installed (pip install '.[dev]')")
    folder = Path(tempfile.mkdtemp(prefix="search-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # setpriv execs the server itself: a signal to it reaches postgres
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: initdb refuses to run as root")
        as_user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        shutil.chown(folder, "nobody")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run(
        [*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "search", "--auth=trust"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    server = subprocess.Popen(
        [*as_user, str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder), "-h", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"postgresql://search@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={port} user=search dbname=postgres").close()
                break
            except psycopg.OperationalError:
                assert server.poll() is None and time.monotonic() < deadline, "PostgreSQL did not start"
                time.sleep(0.1)
        yield url
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_study_in_postgresql(tmp_path, postgres_url, capsys):
    root = tmp_path / "logs"
    space = write_space(tmp_path)
    args = ("--storage", postgres_url, "--trials", "3", "--max_epochs", "100", "--jobs", "1")
    assert main(command(root, space, *args)) == 0
    study = study_of(root, postgres_url)
    assert len(finished(study)) == 3
    assert not (root / "search" / f"{STUDY}.db").exists()  # the study is in the server
    assert sorted(p.name for p in (root / "search" / STUDY).glob("trial_*")) == ["trial_0", "trial_1", "trial_2"]
    capsys.readouterr()
    assert main(command(root, space, *args)) == 0  # done already: nothing more to train
    assert "3 of 3 trials done" in capsys.readouterr().err
    assert len(study_of(root, postgres_url).trials) == 3


def test_the_pruning_callback_lets_the_fast_path_train_between_validations():
    trial = optuna.create_study().ask()
    callback = pruning_callback(trial)
    trainer = SimpleNamespace(check_val_every_n_epoch=100)
    assert [next_observed_by(callback, trainer, epoch) for epoch in (0, 98, 99, 100)] == [99, 99, 99, 199]


@pytest.fixture(scope="module")
def a_study(tmp_path_factory) -> Path:
    """A finished study of one tiny trial."""
    folder = tmp_path_factory.mktemp("a_study")
    assert main(command(folder / "logs", write_space(folder), "--trials", "1", "--max_epochs", "10")) == 0
    return folder


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*")) if folder.exists() else []


NO_SERVER = "postgresql://search@127.0.0.1:1/none"
NO_FOLDER = "sqlite:////no/such/folder/s.db"
BAD_INPUTS = {
    "unknown parameter": ({"lr": 0.1, "momentun": 0.9}, (), "momentun: unknown parameter; did you mean momentum?"),
    "low above high": ({"lr": {"low": 1.0, "high": 0.1}}, (), "lr: low 1.0 is above high 0.1"),
    "unknown choice": ({"activation": {"choices": ["relu", "swish"]}}, (), "unknown activation 'swish'"),
    "no server": (SMALL_SPACE, ("--storage", NO_SERVER), f"--storage {NO_SERVER}: cannot open it"),
    "no folder": (SMALL_SPACE, ("--storage", NO_FOLDER), f"--storage {NO_FOLDER}: cannot open it"),
    "misspelt": (SMALL_SPACE, ("--max_epohcs", "10"), "unrecognized option --max_epohcs; did you mean --max_epochs"),
    "set by the space": (SMALL_SPACE, ("--optimizer", "Adam"), "--optimizer: the space sets it for each trial"),
}


@pytest.mark.parametrize(("space", "args", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, space, args, message):
    root = tmp_path / "logs"
    assert main(command(root, write_space(tmp_path / "space", space), *args)) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("search.py: error: ") and message in err, err
    assert not root.exists()


def test_a_study_of_another_space_is_refused_and_left_as_it_was(a_study, capsys):
    root = a_study / "logs"
    before = listing(root)
    other = write_space(a_study / "other", {"lr": {"low": 0.01, "high": 0.5}})
    assert main(command(root, other, "--trials", "2", "--max_epochs", "10")) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert f"search.py: error: study '{STUDY}' in sqlite:///" in err and "searched another space" in err
    assert main(command(root, write_space(a_study), "--trials", "2", "--max_epochs", "20")) == 2
    assert "searched another --max_epochs (10, not 20)" in capsys.readouterr().err
    assert listing(root) == before
    assert len(study_of(root).trials) == 1
