"""NN.Parameter: the weights held as nn.Parameter, updated in one loop over self.parameters()."""

import torch
from torch import Tensor, nn

from mlnet_lightning.models.functional import Functional


class Parameter(Functional):
    """The functional network with its tensors registered as parameters."""

    def keep(self, name: str, tensor: Tensor) -> None:
        setattr(self, name, nn.Parameter(tensor))

    def update(self) -> None:
        with torch.no_grad():
            for param in self.parameters():
                param -= self.hparams.lr * param.grad
        self.zero_grad()
