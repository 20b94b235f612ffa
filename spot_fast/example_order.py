"""Which examples each rank trains on at each micro-step: the same global order for any world size.

Each epoch has its own shuffled order of all examples (seeded by the run's seed and the epoch). A
global micro-batch is ``per_device_batch * world`` consecutive examples of that order; rank r takes
its r-th slice. An optimizer step is ``grad_accum`` consecutive global micro-batches, so optimizer
step ``s`` of an epoch covers examples ``[s * G, (s + 1) * G)`` of the epoch's order, with
``G = per_device_batch * world * grad_accum`` the global batch: for a fixed global batch, the pairs an
optimizer step sees do not depend on how they are split over ranks and micro-steps. The tail of an
epoch that does not fill a whole optimizer step is left out (and reported).

With a token budget (``micro_batches(..., budget=T)``) a rank's ``per_device_batch * grad_accum``
pairs of a step are regrouped into micro-batches of as many whole pairs, in order, as fit in T
tokens (a pair longer than T alone is its own micro-batch); the pairs of the step are the same.
Every rank then runs the same number of micro-batches (the largest any rank needs, which every rank
computes from the same order, so no communication is needed): a rank that needs fewer splits its
largest micro-batches. Collectives inside a micro-batch (the reward shift, ZeRO-3 gathers) stay
paired across ranks.
"""
import torch


def epoch_order(num_examples, epoch, seed):
    """The shuffled example order of ``epoch``; the same on every rank and every world size."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


class ExampleOrder:
    def __init__(self, num_examples, per_device_batch, grad_accum, world, epochs, seed, max_steps=0):
        self.num_examples, self.per_device_batch, self.grad_accum, self.seed = num_examples, per_device_batch, grad_accum, seed
        self.world = world
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

    def step_examples(self, step, rank):
        """Every example ``rank`` trains on at optimizer step ``step``, in micro-step order."""
        return [i for micro_step in range(self.grad_accum) for i in self.examples(step, micro_step, rank)]

    def micro_batches(self, step, rank, tokens_of=None, budget=0):
        """The micro-batches (lists of example indices) of ``rank`` at optimizer step ``step``: the
        ``grad_accum`` fixed groups, or, with a token ``budget`` and ``tokens_of(index)``, groups by
        tokens (see the module docstring)."""
        if not budget:
            return [self.examples(step, micro_step, rank) for micro_step in range(self.grad_accum)]
        plans = [split_by_tokens(self.step_examples(step, r), tokens_of, budget) for r in range(self.world)]
        return evened(plans[rank], max(len(plan) for plan in plans), tokens_of)


def split_by_tokens(indices, tokens_of, budget):
    """``indices`` in order, grouped greedily into runs of at most ``budget`` tokens (or one example)."""
    groups, current, used = [], [], 0
    for index in indices:
        tokens = tokens_of(index)
        if current and used + tokens > budget:
            groups.append(current)
            current, used = [], 0
        current.append(index)
        used += tokens
    return groups + [current] if current else groups


def evened(groups, count, tokens_of):
    """``groups`` split until there are ``count`` of them: the group with the most tokens among those
    of two or more examples is halved (by examples) each time. ``count`` never exceeds the number of
    examples, so this ends."""
    groups = [list(g) for g in groups]
    while len(groups) < count:
        splittable = [i for i, g in enumerate(groups) if len(g) > 1]
        largest = max(splittable, key=lambda i: sum(tokens_of(x) for x in groups[i]))
        group = groups[largest]
        groups[largest:largest + 1] = [group[:len(group) // 2], group[len(group) // 2:]]
    return groups
