"""The tutorial's networks, one file per section, in the tutorial's order; then the ones beyond it."""

from mlnet_lightning.models.base import TutorialModule
from mlnet_lightning.models.functional import Functional
from mlnet_lightning.models.linear import Linear
from mlnet_lightning.models.mlp import MLP
from mlnet_lightning.models.parameter import Parameter
from mlnet_lightning.models.scratch import Scratch
from mlnet_lightning.models.sequential import Sequential
from mlnet_lightning.models.wrapped import Wrapped

TUTORIAL_MODELS: dict[str, type[TutorialModule]] = {
    "scratch": Scratch,
    "functional": Functional,
    "parameter": Parameter,
    "linear": Linear,
    "sequential": Sequential,
}
# Every network --model knows by name; `--model all` trains the tutorial's.
MODELS: dict[str, type[TutorialModule]] = {**TUTORIAL_MODELS, "mlp": MLP}

__all__ = [
    "MODELS",
    "TUTORIAL_MODELS",
    "TutorialModule",
    "Scratch",
    "Functional",
    "Parameter",
    "Linear",
    "Sequential",
    "MLP",
    "Wrapped",
]
