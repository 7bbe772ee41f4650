"""NN.Linear and Optim: nn.Linear layers make the weights, torch.optim.SGD updates them."""

from torch import Tensor, nn

from mlnet_lightning.models.base import TutorialModule, seeded
from mlnet_lightning.models.scratch import softmax


class Linear(TutorialModule):
    """Two nn.Linear layers (PyTorch's default initialisation); the base class's SGD optimizer."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        with seeded(self.hparams.seed):
            self.lin1 = nn.Linear(self.hparams.num_features, 2)
            self.lin2 = nn.Linear(2, self.hparams.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        a1 = self.lin1(x)
        h1 = a1.sigmoid()
        a2 = self.lin2(h1)
        return a2 if self.logits else softmax(a2)
