"""The example order: each example once per epoch, a new order each epoch, and the same global
order (which pairs each optimizer step sees) for any split over ranks and micro-steps."""
import itertools

import pytest

from spot_fast.example_order import ExampleOrder

NUM_EXAMPLES, EPOCHS = 53, 2


def steps_seen(per_device_batch, grad_accum, world):
    """For each optimizer step, the examples every rank trained on, in (micro-step, rank) order."""
    order = ExampleOrder(NUM_EXAMPLES, per_device_batch, grad_accum, world, EPOCHS, seed=7)
    return order, [[index for micro_step in range(grad_accum) for rank in range(world)
                    for index in order.examples(step, micro_step, rank)]
                   for step in range(order.total_steps)]


@pytest.mark.parametrize("grad_accum, world", list(itertools.product([1, 2, 3], [1, 2])))
def test_each_example_once_per_epoch_and_a_new_order_each_epoch(grad_accum, world):
    order, steps = steps_seen(2, grad_accum, world)
    global_batch = 2 * grad_accum * world
    assert order.steps_per_epoch == NUM_EXAMPLES // global_batch
    assert order.left_out_per_epoch == NUM_EXAMPLES % global_batch
    epochs = [sum(steps[e * order.steps_per_epoch:(e + 1) * order.steps_per_epoch], []) for e in range(EPOCHS)]
    for seen in epochs:
        assert all(len(step) == global_batch for step in steps)
        assert len(seen) == len(set(seen)) == order.steps_per_epoch * global_batch  # no example twice in an epoch
        assert set(seen) <= set(range(NUM_EXAMPLES))
    assert epochs[0] != epochs[1]  # reshuffled
    assert epochs[0][:global_batch] != epochs[1][:global_batch]


@pytest.mark.parametrize("per_device_batch, grad_accum, world", [(6, 1, 1), (3, 2, 1), (3, 1, 2), (1, 3, 2), (2, 3, 1)])
def test_the_same_global_batch_sees_the_same_pairs_however_it_is_split(per_device_batch, grad_accum, world):
    """A global batch of 6 pairs: every split gives each optimizer step the same set of pairs."""
    _, reference = steps_seen(6, 1, 1)
    _, steps = steps_seen(per_device_batch, grad_accum, world)
    assert [sorted(step) for step in steps] == [sorted(step) for step in reference]


def test_max_steps_caps_the_run():
    assert ExampleOrder(NUM_EXAMPLES, 2, 2, 1, EPOCHS, seed=0, max_steps=5).total_steps == 5
    assert ExampleOrder(NUM_EXAMPLES, 2, 2, 1, EPOCHS, seed=0, max_steps=500).total_steps == 2 * (NUM_EXAMPLES // 4)


def test_token_budget_micro_batches_hold_every_pair_once_and_stay_in_budget():
    tokens = [(7 * i) % 23 + 5 for i in range(NUM_EXAMPLES)]  # 5..27 tokens; one pair over the budget below
    tokens[11] = 40
    budget = 30
    order = ExampleOrder(NUM_EXAMPLES, 4, 3, 2, EPOCHS, seed=1)
    for step in range(order.total_steps):
        plans = [order.micro_batches(step, rank, tokens.__getitem__, budget) for rank in range(2)]
        assert len(plans[0]) == len(plans[1])  # ranks stay in step (collectives per micro-batch)
        for rank, plan in enumerate(plans):
            assert sum(plan, []) == order.step_examples(step, rank)  # the same pairs, in order, once each
            for group in plan:
                assert group and (sum(tokens[i] for i in group) <= budget or len(group) == 1)
    fixed = order.micro_batches(0, 1)
    assert fixed == [order.examples(0, m, 1) for m in range(3)] and all(len(g) == 4 for g in fixed)
