"""The tutorial's networks, one file per section, in the tutorial's order."""

from mlnet_lightning.models.base import TutorialModule
from mlnet_lightning.models.functional import Functional
from mlnet_lightning.models.linear import Linear
from mlnet_lightning.models.parameter import Parameter
from mlnet_lightning.models.scratch import Scratch
from mlnet_lightning.models.sequential import Sequential

TUTORIAL_MODELS: dict[str, type[TutorialModule]] = {
    "scratch": Scratch,
    "functional": Functional,
    "parameter": Parameter,
    "linear": Linear,
    "sequential": Sequential,
}

__all__ = ["TUTORIAL_MODELS", "TutorialModule", "Scratch", "Functional", "Parameter", "Linear", "Sequential"]
