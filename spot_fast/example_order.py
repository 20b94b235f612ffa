"""Which examples each rank trains on at each micro-step: the same global order for any world size.

Each epoch has its own shuffled order of all examples (seeded by the run's seed and the epoch). A
global micro-batch is ``per_device_batch * world`` consecutive examples of that order; rank r takes
its r-th slice. An optimizer step is ``grad_accum`` consecutive global micro-batches, so optimizer
step ``s`` of an epoch covers examples ``[s * G, (s + 1) * G)`` of the epoch's order, with
``G = per_device_batch * world * grad_accum`` the global batch: for a fixed global batch, the pairs an
optimizer step sees do not depend on how they are split over ranks and micro-steps. The tail of an
epoch that does not fill a whole optimizer step is left out (and reported).
"""
import torch


def epoch_order(num_examples, epoch, seed):
    """The shuffled example order of ``epoch``; the same on every rank and every world size."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


class ExampleOrder:
    def __init__(self, num_examples, per_device_batch, grad_accum, world, epochs, seed, max_steps=0):
        self.num_examples, self.per_device_batch, self.grad_accum, self.seed = num_examples, per_device_batch, grad_accum, seed
        self.micro = per_device_batch * world  # examples in one global micro-batch
        self.global_batch = self.micro * grad_accum
        self.steps_per_epoch = num_examples // self.global_batch
        self.left_out_per_epoch = num_examples - self.steps_per_epoch * self.global_batch
        total = self.steps_per_epoch * epochs
        self.total_steps = min(total, max_steps) if max_steps > 0 else total
        self._orders = {}  # epoch -> its order; only the current epoch's is kept

    def examples(self, step, micro_step, rank):
        """Indices of the examples ``rank`` trains on at ``micro_step`` of optimizer step ``step``."""
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        start = (step_in_epoch * self.grad_accum + micro_step) * self.micro + rank * self.per_device_batch
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(self.num_examples, epoch, self.seed)}
        return self._orders[epoch][start:start + self.per_device_batch]
