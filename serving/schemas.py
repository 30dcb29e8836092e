"""Request and response bodies of the /v1 API (they make the OpenAPI docs)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _encodable(text: str) -> str:
    # JSON's \ud800-style escapes can carry lone surrogates, which no tokenizer can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = f"U+{ord(text[err.start]):04X}"
        raise ValueError(f"not valid Unicode: a lone surrogate {bad} at {err.start}") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ClassifyRequest(_Request):
    texts: list[Text] = Field(min_length=1, examples=[["A gripping, beautifully acted film."]])
    """Texts to classify."""
    model: str | None = Field(default=None, examples=["auto"])
    """A variant name (`full`, `distilled`, ...) or `auto` for the endpoint's routing policy."""


class EmbedRequest(_Request):
    texts: list[Text] = Field(min_length=1)
    """Texts to embed."""
    model: str | None = None
    """A variant name or `auto`."""
    normalize: bool = True
    """Scale each vector to unit length."""


class GenerateRequest(_Request):
    prompt: Text = Field(min_length=1)
    """The text to continue."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Tokens to generate at most (default 64, or the server's limit if lower)."""
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    """0 decodes greedily; higher samples more freely."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    stop: list[Text] = Field(default_factory=list, max_length=8)
    """Strings that end generation (not included in the text)."""
    stream: bool = False
    """Send tokens as server-sent events as they are generated."""
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    """Seed for sampling, for reproducible answers."""
    model: str | None = None
    """A variant name or `auto`."""


class Prediction(BaseModel):
    label: str
    score: float
    probabilities: dict[str, float]
    variant: str
    """The variant that produced this answer (a cascade may escalate some texts)."""
    version: str


class ClassifyResponse(BaseModel):
    predictions: list[Prediction]
    variant: str
    """The variant asked first."""
    version: str
    escalated: int = 0
    """Texts that a cascade sent on to its fallback variant."""


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dimensions: int
    variant: str
    version: str


class GenerateResponse(BaseModel):
    text: str
    tokens: int
    finish_reason: str
    """`stop` (end of sequence or a stop string) or `length`."""
    variant: str
    version: str


class ErrorBody(BaseModel):
    type: str
    message: str
    """What is wrong and how to fix it."""
    details: list[dict[str, Any]] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


class PromoteRequest(_Request):
    model: str
    """Registry model name."""
    version: int = Field(ge=1)
    """The version the alias moves to."""
    alias: str = "production"
    require: list[str] = []
    """Metric gates, e.g. `accuracy>=0.80`."""
