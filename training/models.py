"""Model builders: causal LMs (GPT-2, Llama) and masked LMs (BERT) from a recipe's size."""

from __future__ import annotations

from typing import Any

from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from training.config import ModelConfig


def model_config(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seq_len: int
) -> PretrainedConfig:
    """The Hugging Face config for a recipe's model, sized to the tokenizer and block length."""
    hidden, layers, heads, inter = cfg.dims
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id
    if cfg.arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_positions=seq_len,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=inter,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )
    if cfg.arch == "llama":
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=seq_len,
            attention_dropout=cfg.dropout,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=seq_len,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=pad,
    )


def build_model(config: PretrainedConfig) -> PreTrainedModel:
    """A freshly initialised model for a config from `model_config`."""
    return _model_class(config)(config)


def build_partitioned_model(config: PretrainedConfig, ds_config: dict[str, Any]) -> PreTrainedModel:
    """A freshly initialised model built under `deepspeed.zero.Init`: each rank allocates only
    its ZeRO-3 partition of every parameter, never the whole model. Collective: every rank calls
    it. Transformers initialises each module's weights on rank 0 (gathered for the moment) and
    shares them, so the weights differ from `build_model`'s under the same seed."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    if ds_config["zero_optimization"]["stage"] != 3:
        raise ValueError("build_partitioned_model needs a ZeRO stage 3 DeepSpeed config")
    # zero.Init reads the world size from DeepSpeed's communication layer, which otherwise
    # starts only with the engine; it wraps the process group Ray Train already set up.
    deepspeed.init_distributed()
    # Transformers consults this object (through a weak reference) only while it lives: models
    # built afterwards, such as the whole model that rank 0 exports, are built whole again.
    zero3 = HfDeepSpeedConfig(ds_config)
    try:
        return _model_class(config)._from_config(config)
    finally:
        del zero3


def _model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    return {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "bert": BertForMaskedLM}[
        config.model_type
    ]


def count_parameters(model: PreTrainedModel) -> int:
    """Unique parameters (tied embeddings counted once; ZeRO-3 partitions counted whole)."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(getattr(p, "ds_numel", p.numel()) for p in unique)


def flops_per_token(config: PretrainedConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights plus the attention scores (PaLM, App. B)."""
    layers = config.num_hidden_layers
    hidden = config.hidden_size
    return 6 * n_params + 12 * layers * hidden * seq_len
