"""The model registry: versions, references, gated promotion, rollback, integrity, crash safety."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from cluster import models_cli
from cluster.registry import (
    CorruptModelError,
    ModelNotFoundError,
    ModelRef,
    PromotionRefused,
    Registry,
    RegistryError,
    is_model_ref,
    parse_ref,
    parse_requirement,
)

MANIFEST = "fmstack.json"
METRICS = {"accuracy": 0.84, "macro_f1": 0.83, "validation_loss": 0.41}


def make_export(directory: Path, metrics: dict[str, Any] | None = None, **extra: Any) -> Path:
    """A tiny fmstack export: three files (one nested) and a manifest with their checksums."""
    # Imported here so that spawned test processes, which import this module, skip torch.
    from training.checkpoint import sha256_file

    (directory / "tokenizer").mkdir(parents=True)
    shape = {"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 2}
    config = {"model_type": "bert", **shape, "intermediate_size": 32}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors").write_bytes(os.urandom(4096))
    (directory / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nfresh\nrotten\n")
    files = {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    manifest = {
        "format_version": 1,
        "task": "classification",
        "label_names": ["rotten", "fresh"],
        "metrics": METRICS if metrics is None else metrics,
        "lineage": {
            "base_model": "minilm",
            "teacher": "models:/teacher@production",
            "dataset": {"sha256": "ab" * 32, "rows": 3000},
            "run": {"name": "sst-ft", "dir": "runs/sst-ft"},
        },
        "recipe": {"objective": "classification", "train": {"epochs": 2, "lr": 5e-5}},
        "created_at": "2026-11-28T10:00:00+00:00",
        **extra,
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return directory


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return make_export(tmp_path / "export")


@pytest.fixture(params=["local", "object-store"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    """A local registry, and the same on a filesystem that is not LocalFileSystem, which takes
    the object-store code path (no renames, no locks, commit marker last, download to cache)."""
    if request.param == "local":
        return Registry(tmp_path / "registry")
    (tmp_path / "bucket").mkdir()
    bucket = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    return Registry("registry", filesystem=bucket, cache_dir=tmp_path / "cache")


def test_manifest_name_is_trainings() -> None:
    from cluster import registry
    from training.storage import MANIFEST as TRAINING_MANIFEST

    assert registry._MANIFEST == TRAINING_MANIFEST == MANIFEST


# ---------------------------------------------------------------- references and requirements


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("sst2", ModelRef("sst2")),
        ("sst2@latest", ModelRef("sst2")),
        ("sst2@3", ModelRef("sst2", version=3)),
        ("sst2@v3", ModelRef("sst2", version=3)),
        ("sst2@production", ModelRef("sst2", alias="production")),
        ("models:/sst2@production", ModelRef("sst2", alias="production")),
        ("models:/sst2/3", ModelRef("sst2", version=3)),
        ("models:/minilm-sst.v2", ModelRef("minilm-sst.v2")),
    ],
)
def test_reference_syntax(ref: str, expected: ModelRef) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "sst2@", "@3", "sst2@0", "a/b", "sst2@prod@x", ".hidden"])
def test_bad_references_say_what_is_expected(ref: str) -> None:
    with pytest.raises(ValueError, match=r"NAME@VERSION|numbered from 1"):
        parse_ref(ref)


def test_only_models_uris_are_registry_references() -> None:
    assert is_model_ref("models:/sst2@production")
    assert not is_model_ref("runs/sst2/model")
    assert not is_model_ref("s3://bucket/models/sst2")
    assert not is_model_ref("sst2@production")


def test_requirements_parse_with_clear_errors() -> None:
    req = parse_requirement(" validation_loss <= 3.5 ")
    assert (req.metric, req.op, req.threshold) == ("validation_loss", "<=", 3.5)
    assert parse_requirement("accuracy>=0.80").failure({"accuracy": 0.8}) is None
    assert parse_requirement("accuracy>0.80").failure({"accuracy": 0.8}) is not None
    with pytest.raises(ValueError, match=r"threshold 'abc' is not a number"):
        parse_requirement("accuracy>=abc")
    with pytest.raises(ValueError, match=r"OP one of >=, >, <=, <, =="):
        parse_requirement("accuracy=0.8")
    with pytest.raises(ValueError, match="finite"):
        parse_requirement("accuracy>=nan")


# ---------------------------------------------------------------- register, get, resolve, list


def test_register_resolve_and_list(registry: Registry, export: Path, tmp_path: Path) -> None:
    first = registry.register(export, "sst2")
    second = registry.register(make_export(tmp_path / "export2"), "sst2", source="run sst-ft")

    assert (first.version, second.version) == (1, 2)
    assert registry.list_models() == ["sst2"]
    assert [v.version for v in registry.list_versions("sst2")] == [1, 2]
    assert second.source == "run sst-ft" and first.source == str(export.resolve())
    assert first.task == "classification" and first.metrics == METRICS
    assert first.created_at == "2026-11-28T10:00:00+00:00"

    assert registry.get("sst2").version == 2  # latest
    for ref in ("sst2@1", "sst2@v1", "models:/sst2/1"):
        assert registry.get(ref).version == 1
    loaded = registry.resolve("sst2@1")
    for rel in ("config.json", "model.safetensors", "tokenizer/vocab.txt", MANIFEST):
        assert (loaded / rel).read_bytes() == (export / rel).read_bytes()


def test_unknown_models_versions_and_aliases_are_named(registry: Registry, export: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no model named 'sst2'"):
        registry.get("sst2")
    for change in (lambda: registry.rollback("sst2"), lambda: registry.promote("sst2", 1)):
        with pytest.raises(ModelNotFoundError, match="no model named 'sst2'"):
            change()
    assert not (Path(registry.root) / "sst2").exists()  # a failed command leaves no trace
    registry.register(export, "sst2")
    with pytest.raises(ModelNotFoundError, match=r"no version 7 \(versions: 1\)"):
        registry.get("sst2@7")
    with pytest.raises(ModelNotFoundError, match="no alias 'production'"):
        registry.get("models:/sst2@production")


def test_refuses_a_corrupted_export(registry: Registry, export: Path) -> None:
    (export / "config.json").write_text("{}")
    with pytest.raises(CorruptModelError, match="config.json does not match its checksum"):
        registry.register(export, "sst2")
    with pytest.raises(RegistryError, match="not an fmstack export"):
        registry.register(export / "tokenizer", "sst2")
    assert registry.list_models() == []


def test_a_damaged_version_is_detected_on_load(tmp_path: Path, export: Path) -> None:
    registry = Registry(tmp_path / "registry")
    stored = Path(registry.register(export, "sst2").uri)
    weights = stored / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[0] ^= 0xFF  # flipped: the random byte may already be any value we would set
    weights.write_bytes(bytes(damaged))
    with pytest.raises(CorruptModelError, match=r"sst2@1: .*model\.safetensors does not match"):
        registry.resolve("sst2")
    (stored / "tokenizer" / "vocab.txt").unlink()
    weights.write_bytes((export / "model.safetensors").read_bytes())
    with pytest.raises(CorruptModelError, match=r"vocab\.txt is missing"):
        registry.resolve("sst2")


def test_a_damaged_remote_version_is_detected_after_download(tmp_path: Path, export: Path) -> None:
    (tmp_path / "bucket").mkdir()
    bucket = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    registry = Registry("reg", filesystem=bucket, cache_dir=tmp_path / "cache")
    registry.register(export, "sst2")
    registry.register(export, "sst2")
    (tmp_path / "bucket/reg/sst2/versions/1/config.json").write_text("{}")
    with pytest.raises(CorruptModelError, match=r"config\.json does not match"):
        registry.resolve("sst2@1")
    (tmp_path / "bucket/reg/sst2/versions/2/tokenizer/vocab.txt").unlink()
    with pytest.raises(CorruptModelError, match=r"sst2@2: .*vocab\.txt is missing"):
        registry.resolve("sst2@2")
    assert not list((tmp_path / "cache").rglob("*.partial"))  # no half-downloaded copy left


# ---------------------------------------------------------------- promotion and rollback


def test_promote_and_rollback(registry: Registry, export: Path, tmp_path: Path) -> None:
    for i in range(3):
        registry.register(make_export(tmp_path / f"e{i}"), "sst2")
    registry.promote("sst2", 1)
    registry.promote("sst2", 2, require=["accuracy>=0.80", "validation_loss<=3.5"])
    promoted = registry.promote("sst2", 3)
    assert promoted.aliases == ("production",)
    assert registry.get("sst2@production").version == 3

    assert registry.rollback("sst2").version == 2
    assert registry.get("sst2@production").version == 2
    assert registry.get("sst2@3").aliases == ()
    assert registry.rollback("sst2", "production").version == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("sst2")
    assert registry.get("sst2@production").version == 1

    log = registry.alias_history("sst2", "production")
    assert [(e["action"], e["version"]) for e in log] == [
        ("promote", 1),
        ("promote", 2),
        ("promote", 3),
        ("rollback", 2),
        ("rollback", 1),
    ]
    assert log[1]["require"] == ["accuracy>=0.8", "validation_loss<=3.5"]


def test_aliases_are_independent(registry: Registry, tmp_path: Path) -> None:
    for i in range(2):
        registry.register(make_export(tmp_path / f"e{i}"), "sst2")
    registry.promote("sst2", 1, "production")
    registry.promote("sst2", 2, "candidate")
    assert registry.aliases("sst2") == {"candidate": 2, "production": 1}
    with pytest.raises(RegistryError, match="no alias 'candidate' to roll back|no earlier"):
        registry.rollback("sst2", "candidate")
    with pytest.raises(ValueError, match="reserved"):
        registry.promote("sst2", 1, "latest")


def test_promotion_below_a_threshold_is_refused(registry: Registry, tmp_path: Path) -> None:
    registry.register(make_export(tmp_path / "good"), "sst2")
    weak = make_export(tmp_path / "weak", metrics={"accuracy": 0.75, "validation_loss": 0.9})
    registry.register(weak, "sst2")
    registry.promote("sst2", 1)
    with pytest.raises(PromotionRefused) as refused:
        registry.promote("sst2", 2, require=["accuracy>=0.80", "validation_loss<=3.5"])
    message = str(refused.value)
    assert "sst2@2" in message and "accuracy is 0.75, needs >= 0.8" in message
    assert "validation_loss" not in message  # that one passed
    assert registry.get("sst2@production").version == 1  # the alias did not move


def test_promotion_on_a_missing_metric_is_refused(registry: Registry, export: Path) -> None:
    registry.register(export, "sst2")
    with pytest.raises(PromotionRefused, match=r"perplexity is missing \(metrics: accuracy,"):
        registry.promote("sst2", 1, require=["perplexity<=20"])
    assert registry.aliases("sst2") == {}


def _promote_many(root: str, versions: list[int], rounds: int, start: Any) -> None:
    registry = Registry(root)
    start.wait(timeout=300)  # both processes promote at the same time, not one after the other
    for i in range(rounds):
        registry.promote("sst2", versions[i % len(versions)])


def test_concurrent_promotions_leave_a_valid_alias(tmp_path: Path) -> None:
    root = str(tmp_path / "registry")
    registry = Registry(root)
    for i in range(3):
        registry.register(make_export(tmp_path / f"e{i}"), "sst2")
    rounds = 40
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    workers = [
        ctx.Process(target=_promote_many, args=(root, versions, rounds, start))
        for versions in ([1, 2], [3, 2])
    ]
    for w in workers:
        w.start()
    # Readers never lock: every read while the writers run must find a complete alias.
    seen = set()
    while any(w.is_alive() for w in workers):
        with suppress(ModelNotFoundError):  # before the first promotion lands
            seen.add(registry.get("sst2@production").version)
        time.sleep(0.002)  # leave the CPU to the writers
    for w in workers:
        w.join(timeout=300)
        assert w.exitcode == 0
    assert seen <= {1, 2, 3}
    alias = json.loads((tmp_path / "registry/sst2/aliases/production.json").read_text())
    assert alias["version"] in (1, 2, 3)
    # The lock serialises read-modify-write: no promotion is lost from the log (without it,
    # about half were).
    assert len(alias["log"]) == 2 * rounds
    assert registry.get("sst2@production").version == alias["version"]


# ---------------------------------------------------------------- crash safety


def test_an_interrupted_registration_is_invisible(
    registry: Registry, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register(export, "sst2")
    real_copy = Registry._copy_file
    copied: list[Path] = []

    def crash_midway(self: Registry, src: Path, dest: str) -> None:
        if copied:
            raise OSError("disk full")
        copied.append(src)
        real_copy(self, src, dest)

    monkeypatch.setattr(Registry, "_copy_file", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        registry.register(export, "sst2")
    assert copied  # it did get part-way
    monkeypatch.undo()

    assert [v.version for v in registry.list_versions("sst2")] == [1]
    assert registry.get("sst2").version == 1
    assert registry.register(export, "sst2").version == 2
    assert [v.version for v in registry.list_versions("sst2")] == [1, 2]


def test_leftovers_of_a_killed_registration_stay_invisible(tmp_path: Path, export: Path) -> None:
    """What a SIGKILL leaves: a hidden staging directory (local) or files without the commit
    marker (object store). Neither is listed, and registering goes on past them."""
    local = Registry(tmp_path / "registry")
    local.register(export, "sst2")
    staging = tmp_path / "registry/sst2/.tmp/version-killed"
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    assert [v.version for v in local.list_versions("sst2")] == [1]
    assert local.register(export, "sst2").version == 2

    (tmp_path / "bucket").mkdir()
    bucket = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    remote = Registry("reg", filesystem=bucket, cache_dir=tmp_path / "cache")
    remote.register(export, "sst2")
    partial = tmp_path / "bucket/reg/sst2/versions/2"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    assert [v.version for v in remote.list_versions("sst2")] == [1]
    assert remote.get("sst2").version == 1
    assert remote.register(export, "sst2").version == 3
    assert [v.version for v in remote.list_versions("sst2")] == [1, 3]


# ---------------------------------------------------------------- the CLI


def cli(*args: str, registry: Path) -> Any:
    return CliRunner().invoke(
        models_cli.app, list(args), env={"FMSTACK_REGISTRY": str(registry), "COLUMNS": "200"}
    )


def test_cli_register_list_show(tmp_path: Path, export: Path) -> None:
    root = tmp_path / "registry"
    result = cli("list", registry=root)
    assert result.exit_code == 0 and "no models" in result.output

    result = cli("register", str(export), "--name", "sst2", "--alias", "candidate", registry=root)
    assert result.exit_code == 0, result.output
    assert "registered sst2@1" in result.output and "sst2@candidate -> 1" in result.output

    result = cli("list", registry=root)
    assert result.exit_code == 0, result.output
    assert "sst2" in result.output and "candidate -> 1" in result.output

    result = cli("list", "sst2", registry=root)
    assert result.exit_code == 0, result.output
    for text in ("accuracy", "0.84", "macro_f1", "classification", "candidate"):
        assert text in result.output

    result = cli("show", "sst2@candidate", registry=root)
    assert result.exit_code == 0, result.output
    for text in ("sst2@1", "rotten, fresh", "accuracy 0.84", "minilm", "teacher@production"):
        assert text in result.output
    assert "sha256 abababab" in result.output and "sst-ft" in result.output
    assert "epochs=2" in result.output and "files:" in result.output


def test_cli_promote_refuse_and_rollback(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    registry = Registry(root)
    registry.register(make_export(tmp_path / "good"), "sst2")
    registry.register(make_export(tmp_path / "weak", metrics={"accuracy": 0.7}), "sst2")

    result = cli("promote", "sst2@1", "--require", "accuracy>=0.80", registry=root)
    assert result.exit_code == 0, result.output
    assert "sst2@production -> 1" in result.output

    gate = ("--alias", "production", "--require", "accuracy>=0.80")
    result = cli("promote", "sst2@2", *gate, registry=root)
    assert result.exit_code == 2
    assert "accuracy is 0.7, needs >= 0.8" in result.stderr
    assert "Traceback" not in result.output
    assert registry.get("sst2@production").version == 1

    result = cli("promote", "sst2@2", "--require", "accuracy>=abc", registry=root)
    assert result.exit_code == 2 and "'abc' is not a number" in result.stderr

    result = cli("promote", "sst2@2", registry=root)
    assert result.exit_code == 0 and "sst2@production -> 2 (was 1)" in result.output
    result = cli("rollback", "sst2", registry=root)
    assert result.exit_code == 0 and "sst2@production -> 1 (was 2)" in result.output
    result = cli("rollback", "sst2", "--alias", "production", registry=root)
    assert result.exit_code == 2 and "no earlier version" in result.stderr

    result = cli("show", "nope@3", registry=root)
    assert result.exit_code == 2 and "no model named 'nope'" in result.stderr
