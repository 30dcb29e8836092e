"""The `fmstack` command line. Subcommands map to functions; knobs live in recipes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cluster import jobs
from cluster.recipes import parse_overrides

app = typer.Typer(
    help="fmstack: train foundation models on Ray Train + DeepSpeed and serve them on Ray Serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(jobs.app, name="job")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="YAML recipe, e.g. configs/pretrain/gpt2-demo.yaml")
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster address (ray://host:10001 or 'auto'); default: embedded local Ray"
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe key, e.g. --set train.max_steps=50"),
]


@app.command()
def pretrain(config: ConfigOption, address: AddressOption = None, set: SetOption = None) -> None:
    """Pretrain a causal or masked LM from scratch with DeepSpeed ZeRO on Ray Train."""
    from training import RecipeError, load_recipe, run_pretraining
    from training.data import DataSourceError

    try:
        cfg = load_recipe(config, parse_overrides(set))
    except RecipeError as err:
        err_console.print(str(err), style="red", markup=False)
        raise typer.Exit(2) from None
    try:
        result = run_pretraining(cfg, address=address)
    except (DataSourceError, FileNotFoundError) as err:
        err_console.print(str(err), style="red", markup=False)
        raise typer.Exit(2) from None
    m = result.metrics
    console.print(
        f"\n[bold green]done[/bold green]: step {m.get('step')}, validation loss "
        f"{m.get('initial_validation_loss', float('nan')):.3f} -> "
        f"{m.get('validation_loss', float('nan')):.3f} "
        f"(perplexity {m.get('validation_perplexity', float('nan')):.1f})"
    )
    console.print(f"model:       {result.model_dir}")
    console.print(f"checkpoint:  {result.checkpoint}")


def main() -> None:
    sys.exit(app())
