"""Shared fixtures: tiny recipes built in-process, and the tier rules."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def tiny_recipe(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A 2-layer model on a small text file: the smallest recipe that exercises everything."""
    recipe: dict[str, Any] = {
        "objective": "causal_lm",
        "model": {"arch": "gpt2", "size": "tiny"},
        "tokenizer": {"kind": "bpe", "vocab_size": 384},
        "data": {
            "sources": [{"kind": "text", "path": str(tiny_corpus(tmp_path))}],
            "seq_len": 32,
            "validation_fraction": 0.1,
        },
        "optimizer": {"lr": 3e-3, "warmup_steps": 2},
        "deepspeed": {"zero_stage": 2},
        "train": {
            "micro_batch_size": 4,
            "global_batch_size": 16,
            "max_steps": 12,
            "log_every": 4,
            "eval_every": 6,
            "eval_batches": 4,
        },
        "checkpoint": {
            "storage_path": str(tmp_path / "runs"),
            "run_name": "tiny",
            "every_steps": 6,
        },
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def tiny_causal_distill_recipe(tmp_path: Path, run_name: str) -> tuple[dict[str, Any], Path]:
    """A 1-layer Llama student of a random 2-layer Llama teacher (a stand-in for SmolLM2) that
    uses the tiny corpus's BPE tokenizer; returns the recipe and the teacher's directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.tokenizer import train_bpe

    recipe = tiny_recipe(tmp_path)
    teacher_dir = tmp_path / "teacher"
    tokenizer = train_bpe(tiny_corpus(tmp_path).read_text().splitlines(), 384)
    tokenizer.save_pretrained(teacher_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    ).save_pretrained(teacher_dir)
    del recipe["tokenizer"]
    recipe |= {
        "model": {"arch": "llama", "size": "tiny", "num_layers": 1},
        "distillation": {"teacher": str(teacher_dir), "alpha": 0.5, "teacher_logits": "in_worker"},
    }
    recipe["train"] |= {"max_steps": 4, "eval_every": 4}
    recipe["checkpoint"] |= {"run_name": run_name, "every_steps": 4}
    return recipe, teacher_dir


def tiny_corpus(tmp_path: Path) -> Path:
    """About 60 KB of repetitive but learnable English, one sentence per line."""
    path = tmp_path / "corpus.txt"
    if not path.exists():
        subjects = ["the whale", "the captain", "a sailor", "the ship", "the sea", "an old man"]
        verbs = ["watched", "followed", "feared", "sought", "remembered", "crossed"]
        objects = ["the harbour", "the storm", "the white whale", "the long voyage", "the crew"]
        lines = [
            f"{s} {v} {o} at dawn, and {s2} {v2} {o2} by night."
            for i, (s, v, o) in enumerate(
                (s, v, o) for s in subjects for v in verbs for o in objects
            )
            for s2, v2, o2 in [(subjects[i % 5], verbs[(i * 7) % 6], objects[(i * 3) % 5])]
        ]
        path.write_text("\n".join(lines * 4) + "\n")
    return path


def free_port() -> int:
    """A loopback TCP port that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's Ray cluster; yields the dashboard (Jobs API) URL."""
    import ray

    from serving import LOCAL_SERVE_ENV, side_ports_env
    from training.pretrain import start_local_ray

    # Free side ports: the tests run beside a Serve that `make demo` left running.
    env = {**LOCAL_SERVE_ENV, **side_ports_env(keep_defaults=False)}
    ctx = start_local_ray(2, env=env, include_dashboard=True, log_to_driver=True)
    try:
        yield f"http://{ctx.dashboard_url}"
    finally:
        ray.shutdown()


@pytest.fixture
def tiny_text(tmp_path: Path) -> Path:
    """The tiny corpus as a text file, one sentence per line."""
    return tiny_corpus(tmp_path)


@pytest.fixture
def recipe_factory(tmp_path: Path):
    def make(**sections: Any) -> dict[str, Any]:
        return tiny_recipe(tmp_path, **sections)

    return make


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT with the packaged MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from training.assets import PACKAGED_MODELS, require

    path = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(require(PACKAGED_MODELS["minilm"], "MiniLM"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_classifier_recipe(tmp_path: Path, base: str, **sections: Any) -> dict[str, Any]:
    """Fine-tuning on a small stratified sample of Rotten Tomatoes."""
    recipe: dict[str, Any] = {
        "task": "classification",
        "model": {"base": base},
        "data": {"source": {"kind": "rotten_tomatoes"}, "max_length": 32, "max_examples": 320},
        "optimizer": {"lr": 2e-3, "warmup_steps": 2},
        "deepspeed": {"zero_stage": 2},
        "train": {"micro_batch_size": 8, "global_batch_size": 16, "epochs": 2, "log_every": 5},
        "checkpoint": {"storage_path": str(tmp_path / "runs"), "run_name": "tiny-finetune"},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


# ---------------------------------------------------------------- tiny models for serving

SENTIMENT_LABELS = ["rotten", "fresh"]


def export_tiny_classifier(out: Path, *, seed: int, layers: int = 2, accuracy: float = 0.8) -> Path:
    """A random tiny BERT classifier exported as fmstack does (manifest, checksums)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from training.assets import PACKAGED_MODELS, require
    from training.checkpoint import write_export

    tokenizer = AutoTokenizer.from_pretrained(require(PACKAGED_MODELS["minilm"], "MiniLM"))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
        id2label=dict(enumerate(SENTIMENT_LABELS)),
        label2id={n: i for i, n in enumerate(SENTIMENT_LABELS)},
    )
    model = BertForSequenceClassification(config)
    # Large random head weights make confident and unsure predictions both common.
    torch.nn.init.normal_(model.classifier.weight, std=3.0)
    model.eval()
    manifest = {
        "task": "classification",
        "label_names": SENTIMENT_LABELS,
        "metrics": {"accuracy": accuracy, "macro_f1": accuracy - 0.01},
        "lineage": {"base_model": "tiny-bert", "seed": seed},
    }
    return write_export(out, model, tokenizer, manifest)


def export_tiny_causal_lm(out: Path) -> Path:
    """A random 2-layer Llama with the SmolLM2 tokenizer, exported as fmstack does."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from training.assets import PACKAGED_MODELS, require
    from training.checkpoint import write_export

    tokenizer = AutoTokenizer.from_pretrained(require(PACKAGED_MODELS["smollm2"], "SmolLM2"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    manifest = {"task": "causal_lm", "metrics": {}, "lineage": {"base_model": "tiny-llama"}}
    return write_export(out, model, tokenizer, manifest)


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def serving_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with sentiment v1, v2 (production -> 1), sentiment-student v1 and tiny-lm v1
    (both production)."""
    from cluster.registry import Registry

    root = tmp_path_factory.mktemp("serving-registry")
    exports = tmp_path_factory.mktemp("serving-exports")
    registry = Registry(root / "registry")
    for seed in (1, 2):
        registry.register(export_tiny_classifier(exports / f"full-{seed}", seed=seed), "sentiment")
    registry.register(
        export_tiny_classifier(exports / "student", seed=3, layers=1, accuracy=0.78),
        "sentiment-student",
    )
    registry.register(export_tiny_causal_lm(exports / "lm"), "tiny-lm")
    registry.promote("sentiment", 1, "production")
    registry.promote("sentiment-student", 1, "production")
    registry.promote("tiny-lm", 1, "production")
    return root / "registry"


# ---------------------------------------------------------------- a real Prometheus

PROMETHEUS_CONFIG = """\
global: {{scrape_interval: {interval}, evaluation_interval: 1s}}
scrape_configs:
  - job_name: ray
    static_configs: [{{targets: {targets}}}]
    metric_relabel_configs:
      # Ray's agent puts application metrics in its `ray_` namespace; fmstack's keep their own.
      - source_labels: [__name__]
        regex: ray_(fmstack_.*)
        target_label: __name__
        replacement: $1
"""


def missing(message: str) -> NoReturn:
    """A tool the test needs is not here: skip, but fail in CI, where set-up provides it."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def prometheus_servers(directory: Path) -> Iterator[Callable[[list[str]], str]]:
    """Yields a function that starts `prometheus` on loopback scraping the given targets and
    returns its URL; every server started is stopped on exit. Skips (fails in CI) without it."""
    import shutil
    import subprocess
    import time
    import urllib.request

    binary = shutil.which("prometheus")
    if binary is None:
        missing("prometheus is not installed (make setup installs Debian's package)")
    processes: list[subprocess.Popen] = []

    def start(targets: list[str], interval: str = "1s") -> str:
        """Scrape every `interval`; a scrape that takes longer than that fails."""
        run_dir = directory / f"prometheus-{len(processes)}"
        run_dir.mkdir(parents=True)
        config = run_dir / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG.format(targets=targets, interval=interval))
        port = free_port()
        log_path = run_dir / "prometheus.log"
        processes.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={run_dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log_path.open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2):
                    return base
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"prometheus did not become ready: {log_path.read_text()}")

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


@pytest.fixture
def prometheus(tmp_path: Path):
    """Start `prometheus` on loopback scraping the given targets; yields a start function."""
    with prometheus_servers(tmp_path) as start:
        yield start


# ---------------------------------------------------------------- Kubernetes manifests, offline

# The Kubernetes versions the chart and samples are checked against (kubernetes-validate's
# schemas): the oldest the chart's kubeVersion admits, one between, and the newest.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0", "1.37.0")


def _crd_dir() -> Path | None:
    """`$FMSTACK_CRDS`, else `../shared/crds` next to the checkout; None when neither exists."""
    root = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("FMSTACK_CRDS"), root.parent / "shared" / "crds"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _closed(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as a typo would be pruned silently by the API
    server: `additionalProperties: false` on every object that lists its properties."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {k: _closed(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and schema.get("type") == "object"
    ):
        closed["additionalProperties"] = False
    return closed


class ManifestValidator:
    """Validates rendered objects: built-in kinds against kubernetes-validate's strict schemas
    for each of KUBERNETES_VERSIONS, custom resources against the closed CRD schemas."""

    def __init__(self, crd_dir: Path) -> None:
        import yaml

        self.crds: dict[tuple[str, str], dict[str, Any]] = {}
        for path in sorted(crd_dir.rglob("*.yaml")):
            crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                self.crds[(f"{group}/{version['name']}", kind)] = _closed(schema)

    def __call__(self, obj: dict[str, Any]) -> None:
        """Raise AssertionError naming the object and the failing path."""
        import jsonschema
        import kubernetes_validate

        what = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')!r}"
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        if key in self.crds:
            spec = {k: v for k, v in obj.items() if k != "metadata"}  # metadata is ObjectMeta
            errors = sorted(jsonschema.Draft7Validator(self.crds[key]).iter_errors(spec), key=str)
            if errors:
                e = errors[0]
                raise AssertionError(
                    f"{what}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                )
            return
        if "." in key[0].split("/")[0] and not key[0].startswith(
            ("apps/", "batch/", "networking.k8s.io/", "rbac.authorization.k8s.io/", "policy/")
        ):
            raise AssertionError(f"{what}: no schema for {key[0]} {key[1]} (add its CRD)")
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(map(str, err.absolute_path)) or "(root)"
                raise AssertionError(
                    f"{what} (Kubernetes {version}): {path}: {err.message}"
                ) from None


@pytest.fixture(scope="session")
def validate_manifest() -> ManifestValidator:
    """`validate_manifest(obj)`: check one Kubernetes object offline (see ManifestValidator)."""
    crd_dir = _crd_dir()
    if crd_dir is None:
        missing(
            "CRD schemas not found: set FMSTACK_CRDS or keep ../shared/crds next to the checkout"
        )
    return ManifestValidator(crd_dir)


def _tool(name: str) -> str:
    """A binary from PATH or the venv (where `make setup` puts helm and kubectl); skips, or fails
    in CI, when it is missing."""
    import shutil
    import sys

    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        missing(f"{name} is not installed (make setup puts it in the venv)")
    return found


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of the helm binary."""
    return _tool("helm")


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool (Debian's prometheus package)."""
    return _tool("promtool")
