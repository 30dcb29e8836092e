"""The command list is pinned: knobs go into recipes, not new flags."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from cluster.cli import app


def _commands(typer_app: typer.Typer) -> set[str]:
    group = typer.main.get_group(typer_app)
    return set(group.commands)


def test_command_list_is_pinned():
    assert _commands(app) == {"pretrain", "finetune", "distill", "eval", "job", "models"}
    group = typer.main.get_group(app)
    assert set(group.commands["job"].commands) == {"submit", "status", "logs", "stop", "list"}
    models = group.commands["models"].commands
    assert set(models) == {"list", "show", "register", "promote", "rollback"}


def test_job_options_are_pinned():
    group = typer.main.get_group(app)
    for name in ("pretrain", "finetune", "distill"):
        assert {p.name for p in group.commands[name].params} == {"config", "address", "set"}


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "pretrain" in result.output and "job" in result.output
