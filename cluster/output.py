"""Terminal output of the cluster commands (`fmstack job`, `fmstack k8s`): one line per message,
failures in red on stderr with an exit code."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

_STATUS_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "STOPPED": "yellow"}

console = Console()
err_console = Console(stderr=True)


def say(markup: str, *, err: bool = False) -> None:
    """Print one line of rich markup, unwrapped, to stdout (or stderr)."""
    (err_console if err else console).print(markup, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `message` as one red line on stderr and exit with `code`."""
    say(f"[red]error:[/red] {escape(' '.join(message.split()))}", err=True)
    raise typer.Exit(code)


def styled_status(status: object) -> str:
    """A job status (Ray Jobs or RayJob) with its colour, as rich markup."""
    name = str(status)
    return f"[{_STATUS_STYLE.get(name, 'cyan')}]{name}[/]"
