"""The fast path: epochs that nothing observes, trained in bulk inside one Lightning hook.

An epoch of the tutorial's networks is a few hundred microseconds of arithmetic, and Lightning's loop
around it (hooks, logging, progress) costs more than that. So at the start of an epoch's step (full
batch) or of the epoch (mini-batches of the project's TensorBatches, cut as it cuts them for each epoch), a
module that supports it trains the epochs before the next one that anything could observe: a validation, a
checkpoint, a callback's epoch hook, the last epoch, `max_steps`. It writes the points Lightning would
have logged for them, moves Lightning's counters on (`mlnet_lightning.internals`), and the observed epoch is
then Lightning's own. The bulk's full-batch epochs are replayed from one captured epoch where that holds
(`replay`: a CUDA graph on a GPU, `tape`: the epoch's operators on a CPU); mini-batch epochs run eagerly.
Anything this cannot vouch for (an unknown callback with epoch or batch hooks, another loader's
mini-batches or only some of them, a resumed epoch's mini-batches, gradient clipping or accumulation,
mixed precision, a strategy other than one device, a profiler, an overridden step or batch hook) makes
it step aside: Lightning trains every epoch itself.

The Trainer is given the fast path as a callback, `FastPath`, which the project's modules return from
`configure_callbacks`. It trains a `SteppedModule` (models/base.py): a module whose training step is its
`step(x, y)`, the loss of a batch and the values it logs, and whose `logged(values)` says what self.log gets
of them. The bulk runs that same `step`, backward and the optimizer's step for each batch (`step_on`), and
gives Lightning's loggers the points that training_step's self.log would have given them (the module's
`logged` values, averaged over each epoch's batches as self.log averages them). The networks know nothing
of it.
"""

from mlnet_lightning.fastpath.bulk import fast_forward
from mlnet_lightning.fastpath.callback import FastPath

__all__ = ["FastPath", "fast_forward"]
