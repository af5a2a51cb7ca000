"""A Differentiable Neural Computer on the repeat-copy task (ALI-G paper, Sec. 5.1,
which follows the L4 paper and trains DeepMind's DNC on its repeat-copy task).

Task (DeepMind's train.py defaults): random patterns of 1-2 vectors of 4 bits,
to be repeated 1-2 times. One sequence, with L pattern vectors and R repeats:

    t = 0          input: start flag
    t = 1..L       input: the pattern
    t = L+1        input: repeat flag carrying R / max_repeats
    t = L+2 ..     target: the pattern R times (R*L steps), then an end flag

Inputs have num_bits + 2 channels (bits, start flag, repeat flag); targets
num_bits + 1 (bits, end flag). Sequences are zero-padded to a common length;
the target tensor carries the loss mask as its LAST channel, so a target is
[time, num_bits + 2] = [bits, end flag, mask].

Per-sample loss: sigmoid cross-entropy summed over bits and masked time steps
(DeepMind's cost, which sums over time and bits and averages over the batch).
Metric: "loss" (the ALI-G paper reports the training objective of this task);
evaluate() also returns "bit_accuracy", the fraction of masked output bits
whose sign is right. Data: fixed seeds, so every optimizer sees the same
sequences; the DNC: 64-unit LSTM controller, 16 slots x 16 words, 1 read head
(DeepMind's default has 4 read heads).

Budgets: paper = DeepMind's train.py (batch 16, 10,000 iterations): 14,400
training sequences at batch 16 are 900 iterations per epoch, 11 epochs ~ 9,900.
lite (900 iterations, ~30 s on one CPU thread) already solves the task with
ALI-G (max_lr 0.1, momentum 0.9: test loss 0.009, bit accuracy 1.0).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import DNC
from . import _common as C
from .base import Budget, Workload, WorkloadInstance, register_workload

NUM_BITS = 4
MIN_LENGTH, MAX_LENGTH = 1, 2
MIN_REPEATS, MAX_REPEATS = 1, 2
NUM_TRAIN, NUM_TEST = 16000, 1600

BUDGETS = {
    # At least 5 epochs everywhere: ALI-G+ then runs the paper's K = 5 sections (K="auto").
    "quick": Budget(epochs=5, batch_size=16, train_subset=160, test_subset=400),
    "lite": Budget(epochs=5, batch_size=16, train_subset=2880, test_subset=1600),
    "paper": Budget(epochs=11, batch_size=16),
}


def max_time(max_length: int = MAX_LENGTH, max_repeats: int = MAX_REPEATS) -> int:
    return max_length * (max_repeats + 1) + 3


def repeat_copy_data(
    count: int,
    seed: int,
    num_bits: int = NUM_BITS,
    lengths: Tuple[int, int] = (MIN_LENGTH, MAX_LENGTH),
    repeats: Tuple[int, int] = (MIN_REPEATS, MAX_REPEATS),
) -> Tuple[Tensor, Tensor]:
    """``count`` repeat-copy sequences: inputs [count, T, num_bits+2], targets [count, T, num_bits+2]
    (bits, end flag, mask), T = max_length * (max_repeats + 1) + 3."""
    rng = np.random.RandomState(seed)
    T = max_time(lengths[1], repeats[1])
    inputs = np.zeros((count, T, num_bits + 2), dtype=np.float32)
    targets = np.zeros((count, T, num_bits + 2), dtype=np.float32)
    start_flag, repeat_flag, end_flag, mask = num_bits, num_bits + 1, num_bits, num_bits + 1
    for i in range(count):
        length = rng.randint(lengths[0], lengths[1] + 1)
        times = rng.randint(repeats[0], repeats[1] + 1)
        pattern = rng.randint(0, 2, size=(length, num_bits)).astype(np.float32)
        inputs[i, 0, start_flag] = 1.0
        inputs[i, 1 : 1 + length, :num_bits] = pattern
        inputs[i, 1 + length, repeat_flag] = times / repeats[1]
        recall = 2 + length
        targets[i, recall : recall + times * length, :num_bits] = np.tile(pattern, (times, 1))
        targets[i, recall + times * length, end_flag] = 1.0
        targets[i, recall : recall + times * length + 1, mask] = 1.0
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def masked_bce_per_sample(output: Tensor, target: Tensor) -> Tensor:
    """Sum over time and output channels of the sigmoid cross-entropy on masked steps."""
    mask = target[..., -1:]
    losses = F.binary_cross_entropy_with_logits(output, target[..., :-1], reduction="none")
    return (losses * mask).sum(dim=(1, 2))


def masked_bit_correct(output: Tensor, target: Tensor) -> Tensor:
    mask = target[..., -1].bool()
    return ((output > 0) == (target[..., :-1] > 0.5))[mask].flatten()


def build(size: str, seed: int, data_dir=None) -> WorkloadInstance:
    budget = BUDGETS[size]
    train_x, train_y = repeat_copy_data(NUM_TRAIN, C.DATA_SEED)
    test_x, test_y = repeat_copy_data(NUM_TEST, C.DATA_SEED + 1)
    train_pos, val_pos = C.holdout_split(NUM_TRAIN)
    train_pos = C.take_subset(train_pos, budget.train_subset)
    with C.seeded(seed):
        model = DNC(input_size=NUM_BITS + 2, output_size=NUM_BITS + 1)
    return WorkloadInstance(
        model=model,
        train=C.ArrayDataset(train_x[train_pos], train_y[train_pos]),
        val=C.truncate(C.ArrayDataset(train_x[val_pos], train_y[val_pos]), budget.test_subset),
        test=C.truncate(C.ArrayDataset(test_x, test_y), budget.test_subset),
        per_sample_loss=masked_bce_per_sample,
        evaluate=C.classifier_evaluate(masked_bce_per_sample, masked_bit_correct, accuracy_name="bit_accuracy"),
        budget=budget,
    )


register_workload(
    Workload(
        name="dnc-copy",
        metric="loss",
        lower_bound=0.0,
        interpolating=True,
        data=None,
        budgets=BUDGETS,
        build=build,
        summary="DNC (16x16 memory, 1 read head) on repeat-copy of 4-bit patterns (synthetic)",
        tags=("synthetic", "recurrent", "memory"),
    )
)
