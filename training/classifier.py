"""Sequence classifiers: a pretrained encoder with a new head, and distillation students."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from training.config import StudentConfig


def _label_maps(label_names: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def classifier_from_pretrained(
    base_dir: str | Path, label_names: list[str], dropout: float | None = None
) -> PreTrainedModel:
    """A pretrained model with a freshly initialised class head: an encoder (BERT-style, on its
    pooled first token) or a causal LM (Llama-style, on its last token). `dropout` None keeps the
    base's own."""
    config = AutoConfig.from_pretrained(base_dir, **_label_maps(label_names))
    if dropout is not None:
        _set_dropout(config, dropout)
    if getattr(config, "pad_token_id", None) is None:
        # A causal LM's head reads the last token before the padding, which it finds by this id.
        config.pad_token_id = classifier_tokenizer(base_dir).pad_token_id
    config.problem_type = "single_label_classification"
    return AutoModelForSequenceClassification.from_pretrained(
        base_dir, config=config, ignore_mismatched_sizes=True
    )


def classifier_tokenizer(model_dir: str | Path) -> Any:
    """A model's tokenizer as classifiers use it: padding on the right, and for a causal LM
    without a pad token, its end-of-text token instead (padding is masked out either way)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def default_student_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers ending with the last one: 6 -> 2 gives [2, 5]."""
    if student_layers > teacher_layers:
        raise ValueError(
            f"student.num_layers ({student_layers}) exceeds the teacher's {teacher_layers} layers"
        )
    step = teacher_layers / student_layers
    return [round((i + 1) * step) - 1 for i in range(student_layers)]


def check_student(cfg: StudentConfig, teacher: Any, hidden_matching: bool = False) -> list[int]:
    """The teacher layers the student mirrors; `ValueError` naming the key when the student
    cannot be built from this teacher. `teacher`: its config (`hidden_size`,
    `num_attention_heads`, `num_hidden_layers`, `intermediate_size`). A `pretrained` student
    owes the teacher nothing: no layers."""
    if cfg.init == "pretrained":
        return []
    if cfg.init == "scratch":
        hidden = cfg.hidden_size or teacher.hidden_size
        heads = cfg.num_heads or teacher.num_attention_heads
        if hidden % heads:
            raise ValueError(
                f"student.hidden_size ({hidden}) must be a multiple of student.num_heads ({heads})"
            )
        if hidden_matching and hidden != teacher.hidden_size:
            raise ValueError(
                f"student.hidden_size ({hidden}) differs from the teacher's hidden size "
                f"({teacher.hidden_size}), and distillation.hidden_weight matches their hidden "
                "states, which needs one width; remove student.hidden_size (the student then has "
                "the teacher's width) or set distillation.hidden_weight: 0"
            )
        return default_student_layers(teacher.num_hidden_layers, cfg.num_layers)
    layers = cfg.layers or default_student_layers(teacher.num_hidden_layers, cfg.num_layers)
    if any(not 0 <= i < teacher.num_hidden_layers for i in layers):
        raise ValueError(
            f"student.layers {layers}: the teacher has layers 0..{teacher.num_hidden_layers - 1}"
        )
    if cfg.intermediate_size is not None and cfg.intermediate_size > teacher.intermediate_size:
        raise ValueError(
            f"student.intermediate_size ({cfg.intermediate_size}) exceeds the teacher's "
            f"{teacher.intermediate_size}; a teacher_layers student can only be narrower"
        )
    return layers


def student_from_teacher(
    teacher: PreTrainedModel, cfg: StudentConfig
) -> tuple[PreTrainedModel, list[int]]:
    """A smaller classifier for distillation, and the teacher layer each student layer mirrors.

    `teacher_layers`: the teacher's embeddings, the chosen layers, pooler and head are copied, so
    the student starts close to the teacher. `scratch`: a fresh encoder of the given width with
    the teacher's vocabulary and labels. (A `pretrained` student is built from its base alone:
    `classifier_from_pretrained`.)
    """
    if cfg.init == "pretrained":
        raise ValueError("a student.init 'pretrained' student is built from student.base")
    t_config = teacher.config
    layers = check_student(cfg, t_config)
    config = copy.deepcopy(t_config)
    if cfg.init == "scratch":
        hidden = cfg.hidden_size or t_config.hidden_size
        config.hidden_size = hidden
        config.num_hidden_layers = cfg.num_layers
        config.num_attention_heads = cfg.num_heads or t_config.num_attention_heads
        config.intermediate_size = cfg.intermediate_size or 4 * hidden
        return AutoModelForSequenceClassification.from_config(config), layers

    config.num_hidden_layers = len(layers)
    state = _select_layers(teacher.state_dict(), layers)
    width = cfg.intermediate_size
    if width is not None and width != t_config.intermediate_size:
        state = _prune_feed_forward(state, width)
        config.intermediate_size = width
    student = AutoModelForSequenceClassification.from_config(config)
    student.load_state_dict(state)
    return student, layers


def _select_layers(state: dict[str, torch.Tensor], layers: list[int]) -> dict[str, torch.Tensor]:
    """Teacher weights renamed for the student: layer `layers[i]` becomes layer i."""
    keep = {str(t): str(i) for i, t in enumerate(layers)}
    out = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if "layer" in parts:
            at = parts.index("layer") + 1
            if at < len(parts) and parts[at].isdigit():
                if parts[at] not in keep:
                    continue
                parts[at] = keep[parts[at]]
        out[".".join(parts)] = tensor.clone()
    return out


_FFN_IN = "intermediate.dense."
_FFN_OUT = "output.dense."


def _prune_feed_forward(state: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """Each layer's `keep` most important feed-forward neurons, in their original order.

    A neuron's importance is the norm of its input weights times the norm of its output weights,
    a bound on how much it can move the layer's output (structured pruning by magnitude).
    """
    suffix = _FFN_IN + "weight"
    prefixes = [name.removesuffix(suffix) for name in state if name.endswith(suffix)]
    if not prefixes:
        raise ValueError(
            "student.intermediate_size: the teacher has no BERT-style feed-forward layers to "
            "narrow; leave it unset or use student.init: scratch"
        )
    out = dict(state)
    for prefix in prefixes:
        w_in, w_out = state[prefix + _FFN_IN + "weight"], state[prefix + _FFN_OUT + "weight"]
        importance = w_in.norm(dim=1) * w_out.norm(dim=0)
        kept = importance.topk(keep).indices.sort().values
        out[prefix + _FFN_IN + "weight"] = w_in[kept].clone()
        out[prefix + _FFN_IN + "bias"] = state[prefix + _FFN_IN + "bias"][kept].clone()
        out[prefix + _FFN_OUT + "weight"] = w_out[:, kept].clone()
    return out


def _set_dropout(config: Any, dropout: float) -> None:
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        if hasattr(config, key) or key == "classifier_dropout":
            setattr(config, key, dropout)
