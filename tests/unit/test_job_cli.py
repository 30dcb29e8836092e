"""`fmstack job` without a cluster: argument checks, recipe validation, connection errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cluster import dashboard
from cluster.cli import app
from training import load_recipe

UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to talk to a Ray cluster."""
    import ray.job_submission

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the CLI contacted a cluster")

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", refuse)


@pytest.fixture
def recipe_path(tmp_path: Path, recipe_factory: Any) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_factory()))
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["job", *args])


def test_bad_recipe_exits_2_without_contacting_a_cluster(
    no_cluster: None, tmp_path: Path, recipe_factory: Any
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe_factory(objective="translation")))
    result = run("submit", "--config", str(bad), "--address", UNREACHABLE)
    assert result.exit_code == 2, result.output
    assert "objective" in result.stderr
    assert "Traceback" not in result.output


def test_bad_override_exits_2_without_contacting_a_cluster(
    no_cluster: None, recipe_path: Path
) -> None:
    result = run("submit", "-c", str(recipe_path), "--set", "train.max_steps=0")
    assert result.exit_code == 2, result.output
    assert "train.max_steps" in result.stderr


def test_bad_promotion_gate_exits_2_without_contacting_a_cluster(
    no_cluster: None, tmp_path: Path, recipe_factory: Any
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe_factory(registry={"name": "lm", "require": ["loss<<2"]})))
    result = run("submit", "--config", str(bad), "--address", UNREACHABLE)
    assert result.exit_code == 2, result.output
    assert "registry.require: bad requirement 'loss<<2'" in result.stderr


def test_missing_recipe_exits_2(no_cluster: None, tmp_path: Path) -> None:
    result = run("submit", "--config", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],  # neither a recipe nor a command
        ["--config", "RECIPE", "--", "python", "-c", "print(1)"],  # both
    ],
    ids=["neither", "both"],
)
def test_exactly_one_of_recipe_or_entrypoint(
    no_cluster: None, recipe_path: Path, args: list[str]
) -> None:
    args = [str(recipe_path) if a == "RECIPE" else a for a in args]
    result = run("submit", *args)
    assert result.exit_code == 2
    assert "exactly one of --config RECIPE or a command after --" in result.stderr


def test_set_needs_a_recipe(no_cluster: None) -> None:
    result = run("submit", "--set", "train.max_steps=5", "--", "echo", "hi")
    assert result.exit_code == 2
    assert "--set only applies to a --config recipe" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "--address", UNREACHABLE, "--", "python", "-c", "print(1)"],
        ["status", "raysubmit_x"],
        ["logs", "raysubmit_x"],
        ["logs", "raysubmit_x", "--follow"],
        ["stop", "raysubmit_x"],
        ["list"],
    ],
    ids=lambda a: a[0] + ("-follow" if "--follow" in a else ""),
)
def test_unreachable_address_is_one_line_and_exit_1(args: list[str]) -> None:
    result = run(*args) if "--" in args else run(*args, "--address", UNREACHABLE)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach a Ray cluster at {UNREACHABLE}: is it running, and is this its "
        "dashboard address (default port 8265)?"
    ]


def test_address_option_beats_ray_address_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray's client lets RAY_ADDRESS override the address it is given; --address must win.
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    result = run("list", "--address", UNREACHABLE)
    assert result.exit_code == 1
    assert f"cluster at {UNREACHABLE}" in result.stderr


def test_default_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", UNREACHABLE)
    result = run("list")
    assert result.exit_code == 1
    assert f"cluster at {UNREACHABLE}" in result.stderr


class FakeClient:
    """Records what `submit` would send to the Jobs API, and the recipe it would upload."""

    submitted: dict[str, Any] = {}

    def __init__(self, address: str, headers: dict[str, str] | None = None) -> None:
        FakeClient.submitted = {"address": address, "headers": headers}

    def submit_job(self, **kwargs: Any) -> str:
        FakeClient.submitted.update(kwargs)
        working_dir = kwargs["runtime_env"]["working_dir"]
        FakeClient.submitted["files"] = sorted(p.name for p in Path(working_dir).iterdir())
        FakeClient.submitted["cfg"] = load_recipe(Path(working_dir) / "recipe.yaml")
        return kwargs["submission_id"] or "raysubmit_fake"


def test_submit_uploads_only_the_validated_recipe_with_overrides(
    monkeypatch: pytest.MonkeyPatch, recipe_path: Path
) -> None:
    import ray.job_submission

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeClient)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    result = run(
        "submit", "-c", str(recipe_path), "--set", "train.max_steps=3", "--address", UNREACHABLE
    )
    assert result.exit_code == 0, result.output
    sent = FakeClient.submitted
    assert sent["entrypoint"] == "fmstack pretrain --config recipe.yaml"
    assert sent["files"] == ["recipe.yaml"]
    assert sent["cfg"] == load_recipe(recipe_path, {"train.max_steps": 3})
    assert sent["headers"] == {"Authorization": "Bearer secret"}
    assert not Path(sent["runtime_env"]["working_dir"]).exists()  # the temp dir is cleaned up
    assert "raysubmit_fake" in result.stdout
    assert "fmstack job logs raysubmit_fake --follow" in result.stdout


def test_auth_token_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert dashboard.auth_headers() == {"Authorization": "Bearer from-file"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert dashboard.auth_headers() == {"Authorization": "Bearer from-env"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert dashboard.auth_headers() == {}
