"""NN.Functional: the same network, with the built-in F.cross_entropy as its loss."""

from mlnet_lightning.models.base import TutorialModule
from mlnet_lightning.models.scratch import Scratch


class Functional(Scratch):
    """The scratch network; its only change is the loss, F.cross_entropy (the base class's)."""

    loss = TutorialModule.loss
