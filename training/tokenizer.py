"""Tokenizers: train a byte-level BPE or WordPiece tokenizer on the corpus, or reuse one.

Whatever the kind, the result is saved as an ordinary Hugging Face tokenizer directory that
`AutoTokenizer.from_pretrained` loads, and it travels with the exported model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from training.config import TokenizerConfig

BPE_SPECIAL = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}
WORDPIECE_SPECIAL = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style); documents are separated by `<|endoftext|>`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BPE_SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **BPE_SPECIAL)


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, lowercase: bool
) -> PreTrainedTokenizerFast:
    """WordPiece (BERT style) with [CLS] ... [SEP] around each sequence."""
    tok = Tokenizer(models.WordPiece(unk_token=WORDPIECE_SPECIAL["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(WORDPIECE_SPECIAL.values()), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **WORDPIECE_SPECIAL)


def build_tokenizer(cfg: TokenizerConfig, texts: Iterable[str]) -> PreTrainedTokenizerBase:
    """Train or load the tokenizer a recipe asks for."""
    if cfg.kind == "pretrained":
        assert cfg.path is not None  # checked by TokenizerConfig
        return AutoTokenizer.from_pretrained(cfg.path)
    if cfg.kind == "wordpiece":
        return train_wordpiece(texts, cfg.vocab_size, cfg.lowercase)
    return train_bpe(texts, cfg.vocab_size)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path))


def separator_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token placed between packed documents: EOS for causal, [SEP] for masked models."""
    for tid in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("tokenizer has neither an EOS nor a SEP token to separate documents")
