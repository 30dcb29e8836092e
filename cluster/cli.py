"""The `fmstack` command line. Subcommands map to functions; knobs live in recipes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from cluster import handover, jobs, k8s_cli, models_cli, serve_cli

if TYPE_CHECKING:
    from training import DistillConfig, FinetuneConfig
from cluster.recipes import parse_overrides

app = typer.Typer(
    help="fmstack: train foundation models on Ray Train + DeepSpeed and serve them on Ray Serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(jobs.app, name="job")
app.add_typer(models_cli.app, name="models")
app.add_typer(serve_cli.app, name="serve")
app.add_typer(k8s_cli.app, name="k8s")
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
        cfg, origin = handover.resolve_start_model(load_recipe(config, parse_overrides(set)))
    except (RecipeError, handover.RegistryError, FileNotFoundError) as err:
        raise _fail(str(err)) from None
    try:
        result = run_pretraining(cfg, address=address, origin=origin)
    except (DataSourceError, FileNotFoundError) as err:
        raise _fail(str(err)) from None
    m = result.metrics
    console.print(
        f"\n[bold green]done[/bold green]: step {m.get('step')}, validation loss "
        f"{m.get('initial_validation_loss', float('nan')):.3f} -> "
        f"{m.get('validation_loss', float('nan')):.3f} "
        f"(perplexity {m.get('validation_perplexity', float('nan')):.1f})"
    )
    console.print(f"model:       {result.model_dir}")
    console.print(f"checkpoint:  {result.checkpoint}")
    if cfg.registry is not None:
        handover.register_export(result.model_dir, cfg.registry, console)


def _fail(message: str) -> typer.Exit:
    err_console.print(message, style="red", markup=False)
    return typer.Exit(2)


@app.command()
def finetune(config: ConfigOption, address: AddressOption = None, set: SetOption = None) -> None:
    """Fine-tune a pretrained encoder for text classification; report precision/recall/F1."""
    from training import FinetuneConfig, RecipeError, load_recipe

    try:
        cfg, origin = handover.resolve_start_model(
            load_recipe(config, parse_overrides(set), FinetuneConfig)
        )
    except (RecipeError, handover.RegistryError, FileNotFoundError) as err:
        raise _fail(str(err)) from None
    _run_classifier_job(cfg, address, origin)


@app.command()
def distill(config: ConfigOption, address: AddressOption = None, set: SetOption = None) -> None:
    """Distill a teacher into a smaller, faster student (a classifier or a causal LM)."""
    from training import DistillConfig, RecipeError, load_recipe, read_recipe

    try:
        recipe = read_recipe(config, parse_overrides(set))
        if recipe.get("objective") == "causal_lm":  # a causal LM distills while pretraining
            if "distillation" not in recipe:
                raise RecipeError(f"{config}: a distill recipe needs a distillation section")
            pretrain(config, address, set)
            return
        cfg, origin = handover.resolve_start_model(
            load_recipe(config, parse_overrides(set), DistillConfig)
        )
    except (RecipeError, handover.RegistryError, FileNotFoundError) as err:
        raise _fail(str(err)) from None
    _run_classifier_job(cfg, address, origin)


def _run_classifier_job(
    cfg: FinetuneConfig | DistillConfig, address: str | None, origin: dict[str, Any] | None
) -> None:
    from training import DistillConfig, run_finetune
    from training.data import DataSourceError

    try:
        result = run_finetune(cfg, address=address, origin=origin)
    except (DataSourceError, FileNotFoundError, ValueError) as err:
        raise _fail(str(err)) from None
    m = result.metrics
    kind = "distilled student" if isinstance(cfg, DistillConfig) else "fine-tuned model"
    console.print(
        f"\n[bold green]done[/bold green]: {kind}, test accuracy {m['accuracy']:.4f}, "
        f"macro F1 {m['macro_f1']:.4f}"
    )
    console.print(f"model:       {result.model_dir}")
    console.print(f"checkpoint:  {result.checkpoint}")
    if cfg.registry is not None:
        handover.register_export(result.model_dir, cfg.registry, console)


@app.command("eval")
def evaluate(
    models: Annotated[
        list[str],
        typer.Argument(help="Exported model directories or registry refs (models:/name@alias)"),
    ],
    split: Annotated[
        str | None,
        typer.Option(
            help="test (classifiers' default) or validation: that split of the first model's "
            "data recipe or of --data; all: every row of --data (language models' default "
            "with --data). A language model's recipe holds out validation blocks only",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Data to score instead of the recipe's (a file, directory, local glob or "
            "s3:// / gs:// URI): labeled CSV, JSONL or Parquet for classifiers; text, JSONL, "
            "CSV or Parquet for causal and masked LMs"
        ),
    ] = None,
    data_format: Annotated[
        str | None,
        typer.Option(help="csv, jsonl, parquet or text; default: from --data's file extension"),
    ] = None,
    text_column: Annotated[str, typer.Option(help="--data's text column")] = "text",
    label_column: Annotated[str, typer.Option(help="--data's label column")] = "label",
    registry: Annotated[
        str | None,
        typer.Option(help="Registry root for models:/ references (default $FMSTACK_REGISTRY)"),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads for every model")] = 2,
    max_examples: Annotated[
        int | None,
        typer.Option(
            min=1, help="Evaluate at most this many examples (token blocks for language models)"
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write the results as JSON here")] = None,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Run classifiers through torch.compile first, as a serving variant with "
            "`compile: true` does, so the latency is what its replicas see",
        ),
    ] = False,
) -> None:
    """Evaluate classifiers (report, confusion matrix) or causal and masked LMs (loss,
    perplexity) on held-out data, with latency at batch 1 and 32, in one table."""
    from cluster.evaluate import DataOption, EvalError, compare_models

    # The tables are the output, not Ray Data's notes on each read of --data or a language
    # model's documents (read from the environment when Ray Data is imported, here and in
    # Ray's workers).
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    try:
        option = DataOption(data, data_format, text_column, label_column) if data else None
        compare_models(
            models, split, threads, max_examples, output, console, option, registry, compile
        )
    except (EvalError, handover.RegistryError, FileNotFoundError, ValueError) as err:
        raise _fail(str(err)) from None


def main() -> None:
    sys.exit(app())
