"""The arithmetic of packing, splitting, masking, schedules and DeepSpeed configs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from training import parse_recipe
from training.config import ModelConfig, OptimizerConfig
from training.data import is_validation, pack_ids
from training.deepspeed_config import deepspeed_config
from training.models import build_model, count_parameters, model_config
from training.objectives import IGNORE_INDEX, masked_lm_inputs
from training.schedule import lr_multiplier
from training.tokenizer import separator_id, train_bpe, train_wordpiece

TEXTS = ["Call me Ishmael. Some years ago, never mind how long precisely."] * 20


def test_packing_separates_documents_and_drops_the_tail():
    blocks = pack_ids([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4, sep=0, frame=None)
    # 1 2 3 0 | 4 5 0 6 | (7 8 9 0 is a full block too)
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]


def test_bert_packing_frames_every_block():
    blocks = pack_ids([[1, 2, 3, 4, 5]], seq_len=4, sep=9, frame=(7, 8))
    assert blocks.tolist() == [[7, 1, 2, 8], [7, 3, 4, 8], [7, 5, 9, 8]]


def test_validation_split_is_stable_and_roughly_proportional():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 1000, size=(4000, 16), dtype=np.int32)
    first = [is_validation(b, 0.1) for b in blocks]
    assert first == [is_validation(b.copy(), 0.1) for b in blocks]
    assert 0.07 < sum(first) / len(first) < 0.13


def test_masking_never_touches_special_tokens_and_is_seeded():
    ids = torch.randint(5, 100, (8, 64))
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]

    def run(seed: int) -> dict[str, torch.Tensor]:
        return masked_lm_inputs(
            ids,
            mask_id=3,
            vocab_size=100,
            special_ids=[1, 2],
            probability=0.15,
            generator=torch.Generator().manual_seed(seed),
        )

    out = run(0)
    chosen = out["labels"] != IGNORE_INDEX
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert 0.08 < chosen.float().mean() < 0.22
    assert torch.equal(out["labels"][chosen], ids[chosen])
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])
    assert (out["input_ids"][chosen] == 3).float().mean() > 0.6
    assert torch.equal(run(0)["input_ids"], out["input_ids"])


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = OptimizerConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    values = [lr_multiplier(s, cfg, max_steps=100) for s in range(101)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)
    assert values[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))


def test_deepspeed_config_is_derived(recipe_factory):
    cfg = parse_recipe(
        recipe_factory(
            deepspeed={"zero_stage": 3, "offload_optimizer": True, "offload_params": True}
        )
    )
    ds = deepspeed_config(cfg, cfg.resolved_precision(fast_bf16=False), cfg.model.dims[0])
    assert ds["train_batch_size"] == 16
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2 == 16
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    # Whole parameters gathered for compute are released after use, not kept for reuse.
    bucket = ds["zero_optimization"]["reduce_bucket_size"]
    assert ds["zero_optimization"]["stage3_max_live_parameters"] == bucket
    assert ds["zero_optimization"]["stage3_max_reuse_distance"] == bucket
    assert ds["bf16"] == {"enabled": False}


def test_auto_precision_follows_the_hardware_and_zero_stage(recipe_factory):
    cfg = parse_recipe(recipe_factory())
    assert cfg.train.precision == "auto"
    assert cfg.resolved_precision(fast_bf16=True) == "bf16"
    assert cfg.resolved_precision(fast_bf16=False) == "fp32"
    stage0 = parse_recipe(recipe_factory(deepspeed={"zero_stage": 0}))
    assert stage0.resolved_precision(fast_bf16=True) == "fp32"


def test_trained_tokenizers_round_trip(tmp_path):
    bpe = train_bpe(TEXTS, vocab_size=300)
    ids = bpe("Call me Ishmael.")["input_ids"]
    assert bpe.decode(ids) == "Call me Ishmael."
    assert separator_id(bpe) == bpe.eos_token_id
    wp = train_wordpiece(TEXTS, vocab_size=300, lowercase=True)
    encoded = wp("Call me Ishmael.")["input_ids"]
    assert encoded[0] == wp.cls_token_id and encoded[-1] == wp.sep_token_id
    wp.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert (
        AutoTokenizer.from_pretrained(tmp_path)("Call me")["input_ids"]
        == wp("Call me")["input_ids"]
    )


def test_wordpiece_training_is_deterministic_and_marks_continuing_pieces():
    # Many equally frequent words: tie-breaking decides the vocabulary. Hugging Face's
    # WordPieceTrainer gives a different one on most runs here (huggingface/tokenizers#1794).
    subjects = ["the whale", "the captain", "a sailor", "the ship", "an old man"]
    verbs = ["watched", "followed", "feared", "sought", "remembered", "crossed"]
    texts = [f"{s} {v} the storm, at dawn" for s in subjects for v in verbs] * 3
    vocabularies = [train_wordpiece(texts, vocab_size=120, lowercase=True).get_vocab()]
    vocabularies += [train_wordpiece(texts, vocab_size=120, lowercase=True).get_vocab()]
    vocabularies += [train_wordpiece(list(reversed(texts)), 120, lowercase=True).get_vocab()]
    assert vocabularies[0] == vocabularies[1] == vocabularies[2]

    wp = train_wordpiece(texts, vocab_size=120, lowercase=True)
    vocab = wp.get_vocab()
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert all(not any(ord(c) >= 0xF0000 for c in token) for token in vocab)
    pieces = wp.tokenize("The Whale watchedship")
    assert pieces[:2] == ["the", "whale"]
    assert pieces[2] == "watched" and all(p.startswith("##") for p in pieces[3:]), pieces
    assert wp.decode(wp("the whale sought")["input_ids"], skip_special_tokens=True) == (
        "the whale sought"
    )


@pytest.mark.parametrize(
    ("arch", "size", "low", "high"),
    [
        ("gpt2", "demo", 10e6, 30e6),
        ("llama", "demo", 10e6, 30e6),
        ("bert", "demo", 10e6, 30e6),
        ("gpt2", "base", 100e6, 200e6),
    ],
)
def test_model_presets_have_the_documented_size(arch, size, low, high):
    tok = train_bpe(TEXTS, vocab_size=300) if arch != "bert" else train_wordpiece(TEXTS, 300, True)
    vocab = 8192 if size == "demo" else 32768
    tok.add_tokens([f"tok{i}" for i in range(vocab - len(tok))])
    with torch.device("meta"):
        model = build_model(model_config(ModelConfig(arch=arch, size=size), tok, seq_len=128))
    assert low <= count_parameters(model) <= high


def test_pretrained_tokenizer_is_reused_from_a_directory(tmp_path):
    from training.config import TokenizerConfig
    from training.tokenizer import build_tokenizer

    train_wordpiece(TEXTS, vocab_size=300, lowercase=True).save_pretrained(tmp_path)
    tok = build_tokenizer(TokenizerConfig(kind="pretrained", path=str(tmp_path)), texts=[])
    assert tok.mask_token == "[MASK]"
    assert len(tok) <= 300


_PARTITIONED_BUILD = """
import os, torch, torch.distributed as dist, deepspeed
from transformers import LlamaConfig
from training.models import build_model, build_partitioned_model, count_parameters
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=32, tie_word_embeddings=True)
ds = {{"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1,
       "zero_optimization": {{"stage": 3}}, "bf16": {{"enabled": False}}}}
model = build_partitioned_model(config, ds)
assert all(p.numel() == 0 and hasattr(p, "ds_shape") for p in model.parameters())
assert count_parameters(model) == count_parameters(build_model(config))
with deepspeed.zero.GatheredParameters(list(model.parameters())):
    std = float(model.model.embed_tokens.weight.std())
assert abs(std - config.initializer_range) < 0.005, std  # transformers' init, not torch's
from transformers.integrations import is_deepspeed_zero3_enabled
assert not is_deepspeed_zero3_enabled()  # later models are built whole again
print("ok")
"""


def test_partitioned_build_allocates_no_whole_parameter_and_initialises_like_transformers():
    import subprocess
    import sys

    from tests.conftest import free_port

    script = _PARTITIONED_BUILD.format(port=free_port())
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_local_ray_workers_find_this_environments_tools_first():
    import sys
    from pathlib import Path

    from training.pretrain import venv_first

    here = str(Path(sys.executable).parent)
    path = os.pathsep.join(["/usr/local/bin", here, "/usr/bin", ""])
    assert venv_first(path).split(os.pathsep) == [here, "/usr/local/bin", "/usr/bin"]
    assert venv_first(venv_first(path)) == venv_first(path)


def test_freed_large_buffers_go_back_to_the_os(tmp_path):
    """After `release_freed_memory`, 64 MiB of freed 4 MiB tensors leave the resident set;
    glibc's default keeps them in its heap, below a tensor still in use."""
    import subprocess
    import sys

    probe = """
import sys, torch

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

if sys.argv[1] == "release":
    from training.hardware import release_freed_memory

    assert release_freed_memory()
first = torch.ones(1 << 20)
del first  # a freed 4 MiB block raises glibc's threshold past 4 MiB
before = rss_mib()
blocks = [torch.ones(1 << 20) for _ in range(16)]
kept = torch.ones(1 << 16)  # a small tensor still in use, after the blocks in the heap
del blocks
print(rss_mib() - before)
"""
    grown = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", probe, mode],
                capture_output=True,
                text=True,
                check=True,
                cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
            ).stdout
        )
        for mode in ("default", "release")
    }
    assert grown["release"] < 8, grown
    assert grown["default"] >= 32, grown  # what the setting is for


def test_all_reduce_returns_the_reduced_cpu_tensor_on_gloo(tmp_path):
    import torch.distributed as dist

    from training.hardware import all_reduce

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        totals = all_reduce(torch.tensor([3.0, 4.0], dtype=torch.float64))
        peak = all_reduce(torch.tensor([7], dtype=torch.int64), op=dist.ReduceOp.MAX)
    finally:
        dist.destroy_process_group()
    assert totals.device.type == "cpu" and totals.tolist() == [3.0, 4.0]
    assert peak.item() == 7


def test_pipeline_modules_import_without_the_training_stack():
    """Ray Data workers unpickle functions of `training.data`; importing it must not pull in
    torch, DeepSpeed or transformers (seconds in every fresh worker process)."""
    import subprocess
    import sys

    import training

    assert set(training.__all__) == set(training._MODULE_OF)
    heavy = "{'torch', 'deepspeed', 'transformers'}"
    probe = f"import sys, training.data; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
