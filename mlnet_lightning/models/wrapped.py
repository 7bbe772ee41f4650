"""Your own network as the tutorial writes its networks, a plain nn.Module, trained as the built-in ones are."""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from mlnet_lightning.imports import class_spelling, import_named
from mlnet_lightning.models.base import TutorialModule, seeded


class Wrapped(TutorialModule):
    """`network` trained with the base class's loss, optimizer, metrics, logs and checkpoints.

    `network` is an nn.Module, or its class's name (`module.Class` or `path/to/file.py:Class`) to be made with
    `network_args`, the data's `num_features` and `num_classes` where its constructor takes them, and the
    random state seeded with `seed` first. The fast path trains it in bulk only where the network's class says
    `fast_path = True`: it cannot know what the network's Python reads.
    """

    def __init__(self, network: nn.Module | str, network_args: dict[str, Any] | None = None, **kwargs) -> None:
        given = network if isinstance(network, nn.Module) else None
        # The base class's save_hyperparameters records this frame's arguments: the network's class rather
        # than the module itself, so that a checkpoint rebuilds it (its tensors are in the state dict).
        network = class_spelling(type(given)) if given is not None else network
        super().__init__(**kwargs)
        self.network = given if given is not None else make_network(network, network_args or {}, self.hparams)
        self.fast_path = getattr(self.network, "fast_path", False) is True

    @property
    def network_name(self) -> str:
        return type(self.network).__name__

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)


def make_network(name: str, options: dict[str, Any], hparams: dict[str, Any]) -> nn.Module:
    """The nn.Module of class `name`, made with `options` and the data's sizes where it takes them."""
    network_class = import_named(name)
    if not (inspect.isclass(network_class) and issubclass(network_class, nn.Module)):
        raise TypeError(f"{name} is not an nn.Module")
    accepted = inspect.signature(network_class).parameters
    sizes = {key: hparams[key] for key in ("num_features", "num_classes") if key in accepted and key not in options}
    with seeded(hparams["seed"]):  # as the built-in networks seed right before their parameters
        return network_class(**sizes, **options)
