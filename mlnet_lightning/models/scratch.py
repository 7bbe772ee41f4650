"""Feedforward network using tensors and autograd: everything written by hand."""

import math

import torch
from torch import Tensor

from mlnet_lightning.models.base import TutorialModule, seeded


def softmax(a: Tensor) -> Tensor:
    return a.exp() / a.exp().sum(-1).unsqueeze(-1)


class Scratch(TutorialModule):
    """2-2-4 network of raw tensors: hand-written softmax, cross-entropy and gradient step."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        n_in, hidden, n_out = self.hparams.num_features, 2, self.hparams.num_classes
        with seeded(self.hparams.seed):
            self.keep("weights1", torch.randn(n_in, hidden) / math.sqrt(2))
            self.keep("bias1", torch.zeros(hidden))
            self.keep("weights2", torch.randn(hidden, n_out) / math.sqrt(2))
            self.keep("bias2", torch.zeros(n_out))

    def keep(self, name: str, tensor: Tensor) -> None:
        # A buffer, not a parameter: a raw tensor that the Trainer still moves and checkpoints.
        self.register_buffer(name, tensor.requires_grad_())

    def forward(self, x: Tensor) -> Tensor:
        a1 = torch.matmul(x, self.weights1) + self.bias1
        h1 = a1.sigmoid()
        a2 = torch.matmul(h1, self.weights2) + self.bias2
        return a2 if self.logits else softmax(a2)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        if self.logits:
            output = output.softmax(-1)
        # torch.arange where the tutorial writes range(): indexing with a Python range converts it
        # element by element, a third of this network's epoch.
        rows = torch.arange(target.shape[0], device=target.device)
        return -(output[rows, target].log()).mean()

    def update(self) -> None:
        """The gradient step, written by hand (the base class then uses no torch.optim optimizer)."""
        lr = self.hparams.lr
        with torch.no_grad():
            for tensor in (self.weights1, self.bias1, self.weights2, self.bias2):
                tensor -= tensor.grad * lr
                tensor.grad.zero_()
