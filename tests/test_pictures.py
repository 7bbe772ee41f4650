"""Pictures of a run: TensorBoard images and hparams, PNG files, and a decision boundary that is right."""

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.image import imread
from sklearn.datasets import make_blobs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch import nn

from mlnet_lightning.data import BlobData
from mlnet_lightning.models import Scratch, Sequential, TutorialModule
from mlnet_lightning.pictures import Grid, Pictures, class_probabilities, predict_grid
from tests.conftest import train
from tests.test_tutorial import fit_module

PNG_FILES = ("data.png", "decision_boundary.png", "confusion_matrix.png", "curves.png")
RUN = ("--model", "sequential", "--max_epochs", "250", "--lr", "0.3", "--check_val_every_n_epoch", "50")


def read_events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def image_steps(events: EventAccumulator) -> dict[str, list[int]]:
    return {tag: [image.step for image in events.Images(tag)] for tag in events.Tags()["images"]}


@pytest.fixture(scope="module")
def picture_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    return root / "sequential" / "version_0", train(root, *RUN)["sequential"]


def test_tensorboard_shows_the_data_the_boundary_forming_and_the_confusion_matrix(picture_run):
    run_dir, _ = picture_run
    events = read_events(run_dir)
    # Before training, then every tenth of the run: the image step counts the epochs trained.
    assert image_steps(events) == {
        "data": [0],
        "decision_boundary": list(range(0, 251, 25)),
        "confusion_matrix": [250],
    }
    snapshots = events.Images("decision_boundary")
    assert {(image.width, image.height) for image in snapshots} == {(200, 200)}
    assert snapshots[0].encoded_image_string != snapshots[-1].encoded_image_string  # the boundary moved
    assert events.Images("data")[0].width >= 400 and events.Images("confusion_matrix")[0].width >= 400


def test_hparams_tab_holds_the_options_and_the_final_metrics(picture_run):
    run_dir, summary = picture_run
    events = read_events(run_dir)
    content = events.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {metric.name.tag for metric in experiment.metric_infos} == {"hp/val_acc", "hp/final_loss"}
    hparams = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams
    assert hparams["model"].string_value == "sequential"
    assert hparams["lr"].number_value == pytest.approx(0.3)
    assert hparams["max_epochs"].number_value == 250 and hparams["data/n_samples"].number_value == 1000
    assert events.Scalars("hp/val_acc")[0].value == pytest.approx(summary["val_acc"])
    assert events.Scalars("hp/final_loss")[0].value == pytest.approx(summary["final_loss"])


def test_png_files_decode_as_pictures(picture_run):
    run_dir, _ = picture_run
    for name in PNG_FILES:
        height, width, _ = imread(run_dir / name).shape
        assert 400 <= height <= 1000 and 500 <= width <= 1200, name


def test_pictures_off_draws_nothing_and_changes_no_number(tmp_path, picture_run):
    summary = train(tmp_path, *RUN, "--pictures", "false")["sequential"]
    run_dir = tmp_path / "sequential" / "version_0"
    assert not any((run_dir / name).exists() for name in PNG_FILES)
    events = read_events(run_dir)
    assert events.Tags()["images"] == [] and "hp/val_acc" in events.Tags()["scalars"]
    drawn = dict(picture_run[1], fit_seconds=None)
    assert dict(summary, fit_seconds=None) == drawn


def test_the_boundary_puts_each_blob_centre_in_its_class():
    model = Sequential(logits=True)
    data = fit_module(model, epochs=1000).datamodule
    _, _, centres = make_blobs(n_samples=1000, centers=4, n_features=2, random_state=0, return_centers=True)
    centres = torch.tensor(centres, dtype=torch.float32)
    grid = Grid.covering(torch.cat([data.x_train, data.x_val]))
    classes, confidence = predict_grid(model, grid)
    rows, cols = grid.pixel(centres)
    assert classes[rows, cols].tolist() == [0, 1, 2, 3]  # make_blobs labels blob i as class i
    assert (confidence[rows, cols] > 0.8).all()
    assert torch.equal(classes[rows, cols], class_probabilities(model, centres).argmax(-1))


def test_grid_covers_the_data_and_maps_back_to_its_pixels():
    points = BlobData().x_train
    grid = Grid.covering(points, margin=0.1, size=50)
    assert grid.x_min < points[:, 0].min() and grid.x_max > points[:, 0].max()
    assert grid.y_min < points[:, 1].min() and grid.y_max > points[:, 1].max()
    rows, cols = grid.pixel(grid.points())
    assert torch.equal(rows * 50 + cols, torch.arange(50 * 50))


def test_probabilities_whether_the_network_returns_softmax_or_logits():
    x = BlobData().x_val
    softmax, logits = Scratch(logits=False), Scratch(logits=True)  # same seed: same weights
    torch.testing.assert_close(class_probabilities(softmax, x), softmax(x).detach())
    torch.testing.assert_close(class_probabilities(logits, x), class_probabilities(softmax, x))


class WideNet(TutorialModule):
    """A user's own network on the project's base: 16 ReLU units, logits out."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


def test_a_users_network_gets_its_boundary_drawn(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    fit_module(WideNet(), epochs=300, logger=logger, callbacks=[Pictures("widenet", snapshots=3)])
    run_dir = tmp_path / "run" / "version_0"
    assert image_steps(read_events(run_dir))["decision_boundary"] == [0, 100, 200, 300]
    assert all((run_dir / name).exists() for name in PNG_FILES)


def test_the_curves_hold_every_point_with_the_fast_path_on_or_off(tmp_path):
    """The recorder behind curves.png takes a bulk's points at once: the same series as epoch by epoch."""
    series = {}
    for fast_path in (True, False):
        model, pictures = Sequential(), Pictures("sequential", draw=False)
        model.fast_path = fast_path
        trainer = L.Trainer(
            max_epochs=250, check_val_every_n_epoch=50, callbacks=[pictures], default_root_dir=tmp_path,
            accelerator="cpu", enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(model, BlobData())
        series[fast_path] = pictures.recorder.series
    assert series[True] == series[False]
    assert series[True]["train/loss"][0] == list(range(250)) and series[True]["val/acc"][0] == [49, 99, 149, 199, 249]
