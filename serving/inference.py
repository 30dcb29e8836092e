"""What a model replica computes, as plain functions of a loaded model: class probabilities,
embeddings and token-by-token generation. No Serve here, so tests and benchmarks reuse them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from training import LoadedModel, classify


def classify_texts(
    loaded: LoadedModel, texts: Sequence[str], max_length: int, batch_size: int = 16
) -> list[dict]:
    """Label, score and every class probability for each text (`batch_size` per forward pass,
    texts of similar length together)."""
    probs = classify(loaded, texts, batch_size=batch_size, max_length=max_length)
    names = loaded.label_names or [str(i) for i in range(probs.shape[1])]
    out = []
    for row in probs:
        best = int(row.argmax())
        out.append(
            {
                "label": names[best],
                "score": float(row[best]),
                "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)},
            }
        )
    return out


@torch.no_grad()
def embed_texts(
    loaded: LoadedModel, texts: Sequence[str], max_length: int, normalize: bool = True
) -> list[list[float]]:
    """Mean of the last hidden layer over each text's tokens (any encoder or decoder)."""
    tok = loaded.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(
        list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    # Eagerly, also for a compiled classifier: compiled for classify's call only, it would stop to
    # compile this one on the first embedding request.
    model = getattr(loaded.model, "_orig_mod", loaded.model)
    out = model(**enc, output_hidden_states=True)
    hidden = out.hidden_states[-1].float()
    mask = enc["attention_mask"].unsqueeze(-1).float()
    vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors.tolist()


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


class Generation:
    """Token-by-token decoding with a KV cache; `step()` returns the next piece of text.

    Pieces are differences of the decoded text, so multi-byte characters arrive whole. A stop
    string ends generation and is cut from the text. Text that may still change (the start of
    a stop string, an incomplete character) is held back until it is settled, so the pieces
    always join to `text`.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        prompt: str,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> None:
        if loaded.task != "causal_lm":
            raise ValueError(f"{loaded.path.name} is a {loaded.task} model, not a causal LM")
        self._loaded = loaded
        self._ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
        self._past: Any = None
        self._generated: list[int] = []
        self._text = ""
        self._sent = 0  # how much of `_text` the pieces returned so far cover
        self._max_new_tokens = max_new_tokens
        self._temperature = temperature
        self._top_p = top_p
        self._stop = [s for s in stop if s]
        self._gen = torch.Generator().manual_seed(seed if seed is not None else 0)
        if seed is None:
            self._gen.seed()
        self.finish_reason: str | None = None

    @property
    def text(self) -> str:
        return self._text

    @property
    def tokens(self) -> int:
        return len(self._generated)

    @torch.no_grad()
    def step(self) -> str:
        """Generate one token; the new text (possibly empty). Sets `finish_reason` at the end,
        and that step returns all that was held back."""
        if self.finish_reason:
            return ""
        out = self._loaded.model(input_ids=self._ids, cache=self._past, use_cache=True)
        self._past = out.cache
        token = _sample(out.logits[0, -1], self._temperature, self._top_p, self._gen)
        if token == self._loaded.tokenizer.eos_token_id:
            self.finish_reason = "stop"
        else:
            self._generated.append(token)
            self._ids = torch.tensor([[token]])
            full = self._loaded.tokenizer.decode(self._generated, skip_special_tokens=True)
            for s in self._stop:
                cut = full.find(s)
                if cut >= 0:
                    full = full[:cut]
                    self.finish_reason = "stop"
            self._text = full
            if not self.finish_reason and len(self._generated) >= self._max_new_tokens:
                self.finish_reason = "length"
        # Once finished nothing more can change, so the held-back text is part of the answer.
        settled = len(self._text) - (0 if self.finish_reason else self._unsettled(self._text))
        piece = self._text[self._sent : settled]
        self._sent += len(piece)
        return piece

    def _unsettled(self, text: str) -> int:
        """How many trailing characters of `text` the next token may still change: the longest
        suffix that begins a stop string (it may complete to one and be cut), else any
        trailing U+FFFD (a multi-byte character whose last bytes have not arrived)."""
        incomplete = len(text) - len(text.rstrip("\ufffd"))
        longest = max((len(s) for s in self._stop), default=0)
        for n in range(min(len(text), longest), incomplete, -1):
            if any(s.startswith(text[-n:]) for s in self._stop):
                return n
        return incomplete

    def __iter__(self) -> Iterator[str]:
        while not self.finish_reason:
            piece = self.step()
            if piece:
                yield piece
