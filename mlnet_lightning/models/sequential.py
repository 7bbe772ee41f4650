"""NN.Sequential: the whole network as one nn.Sequential."""

from torch import Tensor, nn

from mlnet_lightning.models.base import TutorialModule, seeded


class Sequential(TutorialModule):
    """Linear, Sigmoid, Linear, Softmax in one container; the base class's SGD optimizer."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        with seeded(self.hparams.seed):
            self.net = nn.Sequential(
                nn.Linear(self.hparams.num_features, 2),
                nn.Sigmoid(),
                nn.Linear(2, self.hparams.num_classes),
                nn.Identity() if self.hparams.logits else nn.Softmax(dim=-1),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
