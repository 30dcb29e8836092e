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


# ---------------------------------------------------------------- distillation


def soft_target_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2, per position.

    The T^2 factor keeps the soft-target gradients on the same scale as the label loss whatever
    the temperature (Hinton et al., 2015). Logits of any shape [..., classes] are flattened into
    positions (examples or tokens).
    """
    classes = student_logits.shape[-1]
    log_p_student = torch.log_softmax(student_logits.reshape(-1, classes).float() / temperature, -1)
    log_p_teacher = torch.log_softmax(teacher_logits.reshape(-1, classes).float() / temperature, -1)
    kl = torch.nn.functional.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="none")
    return kl.sum(-1) * temperature**2


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The mean of `soft_target_losses` over positions."""
    return soft_target_losses(student_logits, teacher_logits, temperature).mean()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    label_loss: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    labeled: torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha x soft-target loss + (1 - alpha) x the task's own label loss.

    With `labeled` (per example, 1 or 0), `label_loss` is per example too, and the examples
    marked 0, which only the teacher has labeled, learn from the soft targets alone.
    """
    if labeled is None:
        if alpha == 0.0:
            return label_loss
        soft = soft_target_loss(student_logits, teacher_logits, temperature)
        return alpha * soft + (1.0 - alpha) * label_loss
    soft_each = soft_target_losses(student_logits, teacher_logits, temperature)
    weight = labeled.to(soft_each.dtype)
    mixed = alpha * soft_each + (1.0 - alpha) * label_loss.float()
    return (weight * mixed + (1.0 - weight) * soft_each).mean()


def hidden_state_loss(
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    teacher_layers: list[int],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between each student layer's output and the teacher layer it copies.

    `*_hidden` are Hugging Face `hidden_states` (embeddings first); student layer i is matched to
    teacher layer `teacher_layers[i]`. Padding positions are ignored.
    """
    pairs = [(student_hidden[0], teacher_hidden[0])] + [
        (student_hidden[i + 1], teacher_hidden[t + 1]) for i, t in enumerate(teacher_layers)
    ]
    losses = []
    for s, t in pairs:
        err = (s.float() - t.float()).pow(2).mean(-1)
        if attention_mask is not None:
            mask = attention_mask.to(err.dtype)
            losses.append((err * mask).sum() / mask.sum().clamp(min=1))
        else:
            losses.append(err.mean())
    return torch.stack(losses).mean()
