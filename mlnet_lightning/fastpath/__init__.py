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

A module supports the fast path by defining, beside its ordinary Lightning steps:
- `train_epoch(x, y, update)`: one step on a batch (the full batch), stepping with `update()`; returns a
  record (detached tensors);
- `epoch_points(records, y, rates, first_epoch)`: from those records, the values its own `self.log`
  calls would have given Lightning's epoch-end logging, one tensor per name (raises on divergence).
For mini-batches, it also calls `fast_forward(self, None)` in `on_train_epoch_start` and defines
`mini_batch_points(records, sizes, rates, first_epoch)`: the same from each epoch's list of batch records.
"""

from mlnet_lightning.fastpath.bulk import fast_forward

__all__ = ["fast_forward"]
