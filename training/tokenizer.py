"""Tokenizers: train a byte-level BPE or WordPiece tokenizer on the corpus, or reuse one.

Whatever the kind, the result is saved as an ordinary Hugging Face tokenizer directory that
`AutoTokenizer.from_pretrained` loads, and it travels with the exported model.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator
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


# For WordPiece training, a character c after a word's first one is spelled as its twin,
# chr(_TWIN_OFFSET + ord(c)), in the private-use planes 15 and 16. Words with characters beyond
# the first two planes (rare CJK extensions) are left out of training.
_TWIN_OFFSET = 0xF0000
_TWINNED = 0x20000


@functools.cache
def _twins() -> dict[int, int]:
    """The str.translate table; built on first use, not on every import of this module."""
    return {code: _TWIN_OFFSET + code for code in range(_TWINNED)}


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, lowercase: bool
) -> PreTrainedTokenizerFast:
    """WordPiece (BERT style) with [CLS] ... [SEP] around each sequence.

    The same texts give the same vocabulary on every run. `WordPieceTrainer` does not: it numbers
    its "##" pieces in hash-map order, and ties between equally frequent merges then go either
    way (huggingface/tokenizers#1794). So the BPE trainer, whose alphabet is sorted, learns the
    merges on words whose continuing characters are spelled as private-use twins, and the result
    is read back as WordPiece: a piece starting with a twin is a "##" piece.
    """
    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(WORDPIECE_SPECIAL.values()), show_progress=False
    )
    bpe.train_from_iterator(_twinned_words(texts, normalizer, pre_tokenizer), trainer=trainer)
    vocab = {_wordpiece_spelling(piece): i for piece, i in bpe.get_vocab().items()}

    tok = Tokenizer(models.WordPiece(vocab, unk_token=WORDPIECE_SPECIAL["unk_token"]))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **WORDPIECE_SPECIAL)


def _twinned_words(
    texts: Iterable[str],
    normalizer: normalizers.Normalizer,
    pre_tokenizer: pre_tokenizers.PreTokenizer,
) -> Iterator[str]:
    """The texts' words, continuing characters twinned, each repeated as often as it occurs.

    Counted first, so that the BERT pre-tokenizer runs once per distinct whitespace-separated
    chunk rather than once per word of the corpus.
    """
    chunks: Counter[str] = Counter()
    for text in texts:
        chunks.update(normalizer.normalize_str(text).split())
    words: Counter[str] = Counter()
    for chunk, count in chunks.items():
        for word, _ in pre_tokenizer.pre_tokenize_str(chunk):
            words[word] += count
    twins = _twins()
    for word, count in words.items():
        if word.isascii() or max(map(ord, word)) < _TWINNED:
            yield (word[0] + word[1:].translate(twins) + " ") * count


def _wordpiece_spelling(piece: str) -> str:
    if piece in WORDPIECE_SPECIAL.values():
        return piece
    plain = "".join(chr(ord(c) - _TWIN_OFFSET) if ord(c) >= _TWIN_OFFSET else c for c in piece)
    return "##" + plain if ord(piece[0]) >= _TWIN_OFFSET else plain


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
