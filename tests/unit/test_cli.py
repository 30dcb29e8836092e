"""The command list is pinned: knobs go into recipes, not new flags."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from cluster.cli import app


def _commands(typer_app: typer.Typer) -> set[str]:
    group = typer.main.get_group(typer_app)
    return set(group.commands)


def test_command_list_is_pinned():
    assert _commands(app) == {
        "pretrain",
        "finetune",
        "distill",
        "eval",
        "job",
        "models",
        "serve",
        "k8s",
    }
    group = typer.main.get_group(app)
    assert set(group.commands["job"].commands) == {"submit", "status", "logs", "stop", "list"}
    models = group.commands["models"].commands
    assert set(models) == {"list", "show", "register", "promote", "rollback"}
    serve = group.commands["serve"].commands
    assert set(serve) == {"build", "up", "status", "ask", "promote", "down"}


def test_job_options_are_pinned():
    group = typer.main.get_group(app)
    for name in ("pretrain", "finetune", "distill"):
        assert {p.name for p in group.commands[name].params} == {"config", "address", "set"}


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "pretrain" in result.output and "job" in result.output


def test_serve_build_writes_the_serve_config(tmp_path):
    import yaml

    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "build",
            "-c",
            "configs/serve/sentiment.yaml",
            "-o",
            str(out),
            "--set",
            "http.host=0.0.0.0",
        ],
    )
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text())
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    app_config = config["applications"][0]
    assert app_config["import_path"] == "serving.app:build_app"
    names = [d["name"] for d in app_config["deployments"]]
    assert names == ["Ingress", "model-full", "model-distilled", "model-generator"]


def test_serve_up_refuses_a_bad_config_before_touching_a_cluster(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(
        "variants: {full: {model: models:/nothing@production}}\n"
        "routes: {classify: {policy: cascade, variant: full}}\n"
    )
    result = CliRunner().invoke(app, ["serve", "up", "-c", str(config)])
    assert result.exit_code == 2
    assert "routes.classify" in result.output and "fallback" in result.output

    config.write_text(
        f"registry: {tmp_path / 'registry'}\n"
        "variants: {full: {model: models:/nothing@production}}\n"
    )
    result = CliRunner().invoke(app, ["serve", "up", "-c", str(config)])
    assert result.exit_code == 2 and "variants.full.model" in result.output


def test_a_bad_promotion_gate_is_refused_before_any_training(tmp_path, monkeypatch):
    import ray
    import yaml

    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(ray, "init", never)
    root = Path(__file__).resolve().parents[2]
    recipe = yaml.safe_load((root / "configs/finetune/minilm-rotten-tomatoes.yaml").read_text())
    recipe["registry"]["require"] = ["accuracy>>0.8"]
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["finetune", "--config", str(path)])
    assert result.exit_code == 2
    assert "registry.require: bad requirement 'accuracy>>0.8'" in result.output


def test_bad_option_values_are_usage_errors_not_tracebacks():
    for args, problem in (
        (["pretrain", "--config", "configs/pretrain/gpt2-demo.yaml", "--set", "a.b=[1"], "--set"),
        (["eval", "minilm", "--threads", "0"], "--threads"),
        (["eval", "minilm", "--max-examples", "0"], "--max-examples"),
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert problem in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_serve_promote_with_auth_on_needs_a_key_before_anything_moves(monkeypatch, tmp_path):
    from cluster import serve_cli
    from serving import parse_serve_config, serve_config

    cfg = parse_serve_config(
        {
            "variants": {"full": {"model": "models:/sentiment@production"}},
            "registry": str(tmp_path / "registry"),
            "auth": {"enabled": True},
        }
    )
    app_config = serve_config(cfg)["applications"][0]
    deploys: list[dict] = []

    class RunningServe:
        def details(self) -> dict:
            return {"applications": {"fmstack": {"deployed_app_config": app_config}}}

        def deploy(self, config: dict) -> None:
            deploys.append(config)

    monkeypatch.setattr(serve_cli, "_client", lambda address: RunningServe())
    monkeypatch.delenv("FMSTACK_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", "promote", "full", "2"])
    assert result.exit_code == 2, result.output
    assert "auth on: set FMSTACK_API_KEY" in result.output
    assert deploys == [] and not (tmp_path / "registry").exists()


def test_serve_up_leaves_other_applications_alone(monkeypatch, tmp_path):
    from cluster import serve_cli

    config = tmp_path / "serve.yaml"
    config.write_text(f"variants: {{full: {{model: {tmp_path}}}}}\n")
    deploys: list[dict] = []

    class RunningServe:
        def __init__(self, applications: dict) -> None:
            self.applications = applications

        def details(self) -> dict:
            http = {"host": "127.0.0.1", "port": 9}  # nothing listens
            return {"applications": self.applications, "http_options": http}

        def deploy(self, config: dict) -> None:
            deploys.append(config)

        def wait(self, name: str, timeout: float) -> None:
            pass

    up = ["serve", "up", "-c", str(config), "--address", "http://127.0.0.1:1"]
    monkeypatch.setattr(serve_cli, "_client", lambda address: RunningServe({"shop": {}}))
    result = CliRunner().invoke(app, up)
    assert result.exit_code == 2 and deploys == []
    assert "also runs shop, which deploying fmstack would remove" in result.output

    # Our own application is redeployed; Serve keeps the address it started with, and says so.
    running = {"fmstack": {}, "old": {"status": "DELETING"}}
    monkeypatch.setattr(serve_cli, "_client", lambda address: RunningServe(running))
    result = CliRunner().invoke(app, up)
    assert result.exit_code == 0, result.output
    assert len(deploys) == 1
    assert "Serve already listens on 127.0.0.1:9;" in result.output
    assert "serving fmstack at http://127.0.0.1:9 " in result.output


def test_serve_build_notes_what_only_works_on_this_machine(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("variants: {full: {model: models:/sentiment@production}}\n")
    local = CliRunner().invoke(app, ["serve", "build", "-c", str(config)])
    assert local.exit_code == 0
    assert "http.host is 127.0.0.1" in local.output and "registry is the local path" in local.output
    bound = CliRunner().invoke(
        app,
        ["serve", "build", "-c", str(config)]
        + ["--set", "http.host=0.0.0.0", "--set", "registry=s3://models/registry"],
    )
    assert bound.exit_code == 0 and "note:" not in bound.output
