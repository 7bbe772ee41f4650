"""The CPU threads of a fit: set per fit by the module that trains, never for the whole process."""

from __future__ import annotations

import torch
from torch import Tensor


class FitThreads:
    """One CPU thread for a fit of small batches, whatever loader gives them: batches of a few hundred rows
    gain nothing from a second thread, and lose up to 8x whenever that thread must wait for a core
    (measured: 0.75 against 4-6 ms an epoch; a user's DataLoader on two threads took 6-34 s for 1,000
    epochs). A module chooses at its first training batch and gives the threads back as the fit ends; a fit
    that fails gives them back at the end of the module's next fit."""

    SMALL_BATCH_ROWS = 4096

    def __init__(self) -> None:
        self.before: int | None = None

    def choose(self, batch: Tensor, device: torch.device) -> None:
        threads = torch.get_num_threads()
        if threads > 1 and device.type == "cpu" and len(batch) < self.SMALL_BATCH_ROWS:
            self.before = self.before or threads
            torch.set_num_threads(1)

    def give_back(self) -> None:
        if self.before is not None:
            torch.set_num_threads(self.before)
            self.before = None
