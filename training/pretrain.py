"""The pretraining driver: validate, prepare tokenizer and data, then `TorchTrainer.fit()`."""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from training.config import JobConfig, PretrainConfig, TokenizerConfig
from training.data import (
    build_datasets,
    check_sources,
    configure_ray_data,
    dataset_fingerprint,
    read_documents,
    sample_texts,
)
from training.storage import exists, is_uri, join, local_copy, publish_directory
from training.tokenizer import build_tokenizer


@dataclasses.dataclass(frozen=True)
class PretrainResult:
    run_dir: str
    """Where the run keeps checkpoints, tokenizer and export."""
    model_dir: str
    """The exported Hugging Face directory."""
    checkpoint: str | None
    """The latest checkpoint."""
    metrics: dict[str, Any]
    """Rank 0's metrics at the latest checkpoint."""
    history: list[dict[str, Any]]
    """Rank 0's metrics at every kept checkpoint, by step."""


def preflight(cfg: PretrainConfig) -> Path | None:
    """Everything that can be checked before Ray starts; returns the distillation teacher's
    directory, if any."""
    check_sources(cfg.data)
    if cfg.distillation is not None:
        from training.inference import resolve_model_dir

        return resolve_model_dir(cfg.distillation.teacher)
    tokenizer = cfg.tokenizer_config
    if tokenizer.kind == "pretrained":
        assert tokenizer.path is not None
        if not is_uri(tokenizer.path) and not Path(tokenizer.path).is_dir():
            raise FileNotFoundError(
                f"tokenizer.path: {tokenizer.path} is not a directory with a tokenizer"
            )
    return None


def storage_root(cfg: JobConfig) -> str:
    path = cfg.checkpoint.storage_path
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def local_ray_env(num_cpus: int) -> dict[str, str]:
    """Settings for an embedded single-machine Ray, passed to its processes by environment."""
    return {
        # Ray keeps at most `num_cpus` worker processes by default, so a Train run's actors push
        # out the idle Ray Data workers and every run starts (and imports into) new ones. Room
        # for one idle worker per CPU beside a run's actors: up to one worker per CPU, plus its
        # controller, synchronisation and placement-group-cleaner actors, plus one spare.
        "RAY_num_workers_soft_limit": str(2 * num_cpus + 4),
        # One machine: no node is preempted, so no preemption-watcher actor per run.
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        # Notice finished or failed workers within half a second rather than two.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    }


def venv_first(path: str) -> str:
    """`path` (a PATH value) with this Python environment's bin directory first. DeepSpeed builds
    its CPU ops with the first `ninja` on PATH and rebuilds them (a minute on 2 cores) whenever
    another ninja version built them last; `make setup` builds them with this environment's."""
    bin_dir = str(Path(sys.executable).parent)
    rest = [p for p in path.split(os.pathsep) if p and p != bin_dir]
    return os.pathsep.join([bin_dir, *rest])


def start_local_ray(num_cpus: int, env: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    """A new embedded Ray cluster on this machine (even when `ray start` runs one), tuned for
    fmstack's jobs by `local_ray_env` and given `env` (settings already in the environment win);
    returns `ray.init`'s context."""
    import ray

    for name, value in {**local_ray_env(num_cpus), **(env or {})}.items():
        os.environ.setdefault(name, value)
    os.environ["PATH"] = venv_first(os.environ.get("PATH", ""))  # the workers inherit it
    return ray.init(address="local", num_cpus=num_cpus, **kwargs)


def ensure_ray(address: str | None, cfg: JobConfig) -> None:
    """Connect to `address` (or `$RAY_ADDRESS`, set for Ray Jobs), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
        return
    needed = int(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker + 0.999)
    start_local_ray(max(os.cpu_count() or 1, needed))


def build_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    cfg: JobConfig,
    datasets: dict[str, Any],
    checkpoint_config: Any,
) -> Any:
    """A `TorchTrainer` for any fmstack job: the recipe's workers and devices, its run name and
    storage (so a resubmission resumes), its failure budget; each worker reads an equal shard."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.sharding import EqualSplit

    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.checkpoint.run_name,
            storage_path=storage_root(cfg),
            failure_config=ray.train.FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=checkpoint_config,
        ),
        datasets=datasets,
        dataset_config=EqualSplit(datasets, cfg.scaling.num_workers),
    )


def prepare_tokenizer(cfg: TokenizerConfig, documents: Any, run_dir: str) -> str:
    """The run's tokenizer: reused when the run already has one, so a resumed run matches."""
    uri = join(run_dir, "tokenizer")
    if exists(join(uri, "tokenizer_config.json")):
        return uri
    tokenizer = build_tokenizer(cfg, sample_texts(documents))
    with tempfile.TemporaryDirectory(prefix="fmstack-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        publish_directory(Path(tmp), uri)
    return uri


def run_pretraining(
    cfg: PretrainConfig, address: str | None = None, origin: dict[str, Any] | None = None
) -> PretrainResult:
    """Run a pretraining job to completion (or resume it) and export its model. `origin`
    describes where a distillation teacher came from (e.g. the registry version a `models:/`
    reference resolved to), for the new model's lineage."""
    teacher_dir = preflight(cfg)
    tokenizer_cfg = cfg.tokenizer_config
    if teacher_dir is not None:  # the student speaks the teacher's vocabulary
        tokenizer_cfg = TokenizerConfig(kind="pretrained", path=str(teacher_dir))
    from training.checkpoint import claim_run

    root = storage_root(cfg)
    run_dir = join(root, cfg.checkpoint.run_name)
    claim_run(run_dir, cfg.model_dump(mode="json"))
    ensure_ray(address, cfg)
    import ray.train

    from training.loop import train_loop_per_worker

    configure_ray_data()
    documents = read_documents(cfg.data)
    tokenizer_uri = prepare_tokenizer(tokenizer_cfg, documents, run_dir)
    train_ds, val_ds = build_datasets(cfg, documents, str(local_copy(tokenizer_uri)))
    print(
        f"data: {train_ds.count():,} training and {val_ds.count():,} validation blocks of "
        f"{cfg.data.seq_len} tokens",
        flush=True,
    )
    export_uri = join(run_dir, "model")
    loop_config: dict[str, Any] = {
        "recipe": cfg.model_dump(mode="json"),
        "tokenizer_uri": tokenizer_uri,
        "export_uri": export_uri,
        "teacher_dir": str(teacher_dir) if teacher_dir else None,
        "lineage": {
            "base_model": None,
            "teacher": {
                "ref": cfg.distillation.teacher,
                "path": str(teacher_dir),
                **(origin or {}),
            }
            if cfg.distillation and teacher_dir
            else None,
            "dataset": {
                "sources": [s.model_dump(mode="json") for s in cfg.data.sources],
                "sha256": dataset_fingerprint(cfg.data),
                "train_blocks": train_ds.count(),
                "validation_blocks": val_ds.count(),
            },
            "run": {"name": cfg.checkpoint.run_name, "dir": run_dir},
        },
    }
    trainer = build_trainer(
        train_loop_per_worker,
        loop_config,
        cfg,
        {"train": train_ds, "validation": val_ds},
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
    )
    result = trainer.fit()
    return PretrainResult(
        run_dir=run_dir,
        model_dir=export_uri,
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        metrics=dict(result.metrics or {}),
        history=sorted(
            (dict(m) for _, m in result.best_checkpoints or []), key=lambda m: m.get("step", 0)
        ),
    )
