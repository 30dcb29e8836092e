"""Pretraining objectives: turn a batch of packed blocks into model inputs with labels."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def causal_lm_inputs(input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Next-token prediction: the model shifts the labels itself."""
    return {"input_ids": input_ids, "labels": input_ids}


def masked_lm_inputs(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: list[int],
    probability: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """BERT masking: of the chosen tokens 80% become [MASK], 10% a random token, 10% stay."""
    labels = input_ids.clone()
    probs = torch.full(input_ids.shape, probability)
    probs[torch.isin(input_ids, torch.tensor(special_ids))] = 0.0
    chosen = torch.bernoulli(probs, generator=generator).bool()
    labels[~chosen] = IGNORE_INDEX

    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(inputs.shape, 0.8), generator=generator).bool() & chosen
    inputs[to_mask] = mask_id
    to_random = (
        torch.bernoulli(torch.full(inputs.shape, 0.5), generator=generator).bool()
        & chosen
        & ~to_mask
    )
    inputs[to_random] = torch.randint(vocab_size, inputs.shape, generator=generator)[to_random]
    return {"input_ids": inputs, "labels": labels}
