"""Beyond the tutorial: its network with any hidden layers, activation and initialisation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from mlnet_lightning.models.base import TutorialModule, seeded

Activation = Literal["sigmoid", "tanh", "relu", "gelu"]
Init = Literal["tutorial", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal"]

ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
}


def tutorial_init(weight: Tensor) -> None:
    """randn / sqrt(fan_in), drawn in the tutorial's (in, out) layout so that the same seed gives
    the tutorial's very numbers (nn.Linear keeps its weight as (out, in))."""
    fan_out, fan_in = weight.shape
    weight.copy_(torch.randn(fan_in, fan_out).T / math.sqrt(fan_in))


INITS: dict[Init, Callable[[Tensor], object]] = {
    "tutorial": tutorial_init,
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda weight: nn.init.kaiming_uniform_(weight, nonlinearity="relu"),
    "kaiming_normal": lambda weight: nn.init.kaiming_normal_(weight, nonlinearity="relu"),
    "orthogonal": nn.init.orthogonal_,
}


class MLP(TutorialModule):
    """Linear layers with an activation between them; returns logits for cross-entropy.

    The defaults are the tutorial's network (one hidden layer of 2 sigmoid units, its
    initialisation) without its double softmax.
    """

    def __init__(
        self,
        hidden: list[int] = [2],  # noqa: B006 (copied below, never changed; a list as configs write it)
        activation: Activation = "sigmoid",
        init: Init = "tutorial",
        **kwargs,
    ) -> None:
        """
        Args:
            hidden: units of each hidden layer: [2] is the tutorial's network, [16, 16] two hidden
                layers, [] a linear classifier.
            activation: the non-linearity after each hidden layer.
            init: the weights' initialisation: the tutorial's randn / sqrt(fan_in), or an nn.init
                scheme (kaiming for ReLU); biases start at zero.
        """
        hidden = list(hidden)
        kwargs["logits"] = True  # cross-entropy takes logits: the tutorial's double softmax stays in its sections
        super().__init__(**kwargs)
        if any(size < 1 for size in hidden):
            raise ValueError(f"hidden sizes must be positive integers, got {hidden}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: choose {', '.join(ACTIVATIONS)}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}: choose {', '.join(INITS)}")
        sizes = [self.hparams.num_features, *hidden, self.hparams.num_classes]
        layers: list[nn.Module] = []
        with seeded(self.hparams.seed):
            for n_in, n_out in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
            self.net = nn.Sequential(*layers[:-1])  # no activation after the output layer
            torch.manual_seed(self.hparams.seed)  # again, right before the initialisation draws, as the tutorial seeds
            with torch.no_grad():
                for layer in self.net[::2]:
                    INITS[init](layer.weight)
                    layer.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
