"""``RewardShift``: the running ``delta`` of the ``spot_bco`` loss (a stand-in for beta * log Z(x)).

Update-then-use, as TRL 0.20's ``RunningMoments`` in ``bco_pair``: each micro-batch, the detached
rewards ``cat(r+, r-)`` are summed and counted (across ranks through ``all_reduce`` when given), the
state is updated, and the new value is what the loss uses for that same batch.

- ``cumulative`` (default): the equal-weight mean of every reward seen so far (count-weighted, so
  ranks and batches of different sizes are combined exactly).
- ``ema``: ``delta <- decay * delta + (1 - decay) * batch_mean``; the first batch sets it directly.

The state lives on the rewards' device as float64 tensors, and an update neither reads from nor
copies to the host (the batch's count is a device fill, not a tensor made from a Python number);
``state_dict`` (which reads) is for checkpoints.
"""
import torch

MODES = ("cumulative", "ema")


class RewardShift:
    def __init__(self, mode="cumulative", decay=0.99, all_reduce=None):
        """``all_reduce(t)``, if given, must sum the float64 tensor ``t`` over all ranks in place
        (e.g. ``torch.distributed.all_reduce``)."""
        if mode not in MODES:
            raise ValueError(f"unknown reward-shift mode {mode!r}; expected one of {MODES}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1); got {decay}")
        self.mode, self.decay, self.all_reduce = mode, float(decay), all_reduce
        self.mean = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    def update(self, chosen_rewards, rejected_rewards):
        """Fold this batch's rewards into the state; return the new delta (0-d fp32, no grad)."""
        values = torch.cat([chosen_rewards.detach().reshape(-1), rejected_rewards.detach().reshape(-1)]).double()
        count = torch.full((), values.numel(), dtype=torch.float64, device=values.device)  # a fill: no host copy
        stats = torch.stack([values.sum(), count])
        if self.all_reduce is not None:
            self.all_reduce(stats)
        batch_sum, batch_count = stats[0], stats[1]
        mean, count = self.mean.to(values.device), self.count.to(values.device)
        batch_mean = batch_sum / batch_count
        if self.mode == "cumulative":
            total = count + batch_count
            self.mean = mean + (batch_mean - mean) * (batch_count / total)
        else:
            self.mean = torch.where(count > 0, self.decay * mean + (1 - self.decay) * batch_mean, batch_mean)
            total = count + batch_count
        self.count = total
        return self.mean.float()

    @property
    def value(self):
        return self.mean.float()

    def state_dict(self):
        return {"mode": self.mode, "decay": self.decay, "mean": float(self.mean), "count": float(self.count)}

    def load_state_dict(self, state):
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint reward shift is {state['mode']!r}, this run uses {self.mode!r}")
        self.decay = float(state["decay"])
        self.mean = torch.tensor(state["mean"], dtype=torch.float64)
        self.count = torch.tensor(state["count"], dtype=torch.float64)
