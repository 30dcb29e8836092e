"""Epoch batching for classifier training: reshuffled, length-grouped, resumable."""

from __future__ import annotations

import numpy as np
import torch

from training.checkpoint import TrainerState
from training.classifier_loop import LENGTH_GROUP_BATCHES, classifier_batches, epoch_batches


def _lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 64, size=n)


def test_an_epoch_uses_each_row_at_most_once_in_full_batches():
    lengths = _lengths(1003)
    for group in (False, True):
        batches = epoch_batches(lengths, 16, seed=0, epoch=0, group_by_length=group)
        assert batches.shape == (1003 // 16, 16)
        assert len(np.unique(batches)) == batches.size


def test_every_epoch_reshuffles_and_the_same_epoch_repeats():
    lengths = _lengths(640)
    first = epoch_batches(lengths, 16, seed=3, epoch=0, group_by_length=True)
    assert np.array_equal(first, epoch_batches(lengths, 16, seed=3, epoch=0, group_by_length=True))
    second = epoch_batches(lengths, 16, seed=3, epoch=1, group_by_length=True)
    assert not np.array_equal(first, second)
    other_seed = epoch_batches(lengths, 16, seed=4, epoch=0, group_by_length=True)
    assert not np.array_equal(first, other_seed)


def test_grouping_by_length_cuts_padding():
    lengths = _lengths(16 * LENGTH_GROUP_BATCHES * 4)

    def padded_tokens(batches: np.ndarray) -> int:
        return int(sum(lengths[b].max() * len(b) for b in batches))

    grouped = epoch_batches(lengths, 16, seed=0, epoch=0, group_by_length=True)
    shuffled = epoch_batches(lengths, 16, seed=0, epoch=0, group_by_length=False)
    assert padded_tokens(grouped) < 0.6 * padded_tokens(shuffled)
    # ... and the batch order is still random, not longest-last.
    maxima = np.array([lengths[b].max() for b in grouped])
    assert not np.all(np.diff(maxima) >= 0)


def test_batches_resume_at_the_saved_data_position():
    n = 100
    rows = {
        "input_ids": torch.arange(n).unsqueeze(1).repeat(1, 4),
        "attention_mask": torch.ones(n, 4, dtype=torch.int8),
        "label": torch.arange(n) % 2,
    }
    state = TrainerState()
    stream = classifier_batches(rows, 8, state, seed=0, group_by_length=True)
    seen = [next(stream)["input_ids"][:, 0].tolist() for _ in range(15)]  # into epoch 1
    assert (state.epoch, state.batches_in_epoch) == (1, 3)

    resumed = TrainerState(epoch=1, batches_in_epoch=1)
    stream = classifier_batches(rows, 8, resumed, seed=0, group_by_length=True)
    assert [next(stream)["input_ids"][:, 0].tolist() for _ in range(2)] == seen[13:15]
