"""`fmstack models`: register, inspect, promote and roll back versions in the model registry."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.registry import (
    DEFAULT_ROOT,
    REGISTRY_ENV,
    ModelVersion,
    Registry,
    RegistryError,
    parse_requirement,
)

app = typer.Typer(
    help="Register, inspect, promote and roll back model versions (the model registry).",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

# Shown first, in this order, when a model has them; other metrics follow alphabetically.
_KEY_METRICS = ("accuracy", "macro_f1", "validation_loss", "validation_perplexity")
_MAX_METRIC_COLUMNS = 4

RegistryOption = Annotated[
    str,
    typer.Option(
        "--registry",
        envvar=REGISTRY_ENV,
        help="Registry root: a directory or an s3://, gs:// URI",
    ),
]
AliasOption = Annotated[str, typer.Option("--alias", help="Alias to move, e.g. production")]


@contextmanager
def _registry(root: str) -> Iterator[Registry]:
    """The registry; its errors (and bad references or requirements) exit 2 with one line."""
    try:
        yield Registry(root)
    except (RegistryError, ValueError, OSError) as err:
        err_console.print(f"error: {err}", style="red", markup=False)
        raise typer.Exit(2) from None


def _when(timestamp: str) -> str:
    try:
        return datetime.fromisoformat(timestamp).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return timestamp


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metric_names(versions: list[ModelVersion]) -> list[str]:
    present = {m for v in versions for m, x in v.metrics.items() if isinstance(x, (int, float))}
    ordered = [m for m in _KEY_METRICS if m in present]
    ordered += sorted(present - set(ordered))
    return ordered[:_MAX_METRIC_COLUMNS]


def _compact(value: Any, limit: int = 8) -> str:
    """A dict's scalar entries as `k=v, ...`; anything else as itself."""
    if not isinstance(value, Mapping):
        return "-" if value is None else str(value)
    items = [
        f"{k}={_number(v)}"
        for k, v in value.items()
        if v is not None and not isinstance(v, (Mapping, list))
    ]
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f", ... ({more} more)" if more > 0 else "") or "-"


def _parent(entry: Any) -> str:
    """A base model or teacher: its registry version (if it came from one), where it was loaded
    from, and its headline metrics."""
    if not isinstance(entry, Mapping):
        return _compact(entry)
    registry = entry.get("registry")
    parts = [str(registry["version"])] if isinstance(registry, Mapping) else []
    parts.append(str(entry.get("path") or entry.get("ref") or "-"))
    metrics = entry.get("metrics")
    if isinstance(metrics, Mapping):
        headline = {k: metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}
        if headline:
            parts.append(_compact(headline))
    return ", ".join(parts)


def _field(label: str, value: str) -> None:
    console.print(f"  [bold]{label + ':':<12}[/bold] {escape(value)}", highlight=False)


def _models_table(reg: Registry, root: str) -> Table | None:
    """One row per model; None when the registry is empty."""
    names = reg.list_models()
    if not names:
        return None
    table = Table(title=f"models in {escape(root)}", title_justify="left")
    for column in ("model", "versions", "latest", "registered", "aliases"):
        table.add_column(column, no_wrap=column != "aliases")
    for name in names:
        versions = reg.list_versions(name)
        aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(reg.aliases(name).items()))
        table.add_row(
            escape(name),
            str(len(versions)),
            str(versions[-1].version),
            _when(versions[-1].registered_at),
            escape(aliases) or "-",
        )
    return table


def _versions_table(reg: Registry, name: str, root: str) -> Table:
    """One row per version of `name`, with its key metrics as columns."""
    versions = reg.list_versions(name)
    metrics = _metric_names(versions)
    table = Table(title=f"{escape(name)} in {escape(root)}", title_justify="left")
    table.add_column("version", justify="right", no_wrap=True)
    table.add_column("created")
    table.add_column("task")
    for metric in metrics:
        table.add_column(metric, justify="right")
    table.add_column("aliases")
    for v in versions:
        table.add_row(
            str(v.version),
            _when(v.created_at),
            escape(v.task or "-"),
            *(_number(v.metrics[m]) if m in v.metrics else "-" for m in metrics),
            escape(", ".join(v.aliases)) or "-",
        )
    return table


# ---------------------------------------------------------------- commands


@app.command("list")
def list_(
    name: Annotated[
        str | None, typer.Argument(help="A model: list its versions", show_default=False)
    ] = None,
    registry: RegistryOption = DEFAULT_ROOT,
) -> None:
    """List the registry's models, or the versions of one model."""
    with _registry(registry) as reg:
        table = (
            _models_table(reg, registry) if name is None else _versions_table(reg, name, registry)
        )
    if table is None:
        console.print(
            f"no models in {escape(registry)}; add one with "
            "`fmstack models register MODEL_DIR --name NAME`",
            highlight=False,
        )
        return
    console.print(table)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS")],
    registry: RegistryOption = DEFAULT_ROOT,
) -> None:
    """Summarise a version's manifest: task, labels, metrics, lineage, recipe, files."""
    with _registry(registry) as reg:
        version = reg.get(ref)
    manifest = version.manifest
    aliases = f"  ({', '.join(version.aliases)})" if version.aliases else ""
    console.print(f"[bold]{escape(version.ref)}[/bold]{escape(aliases)}", highlight=False)
    _field("location", version.uri)
    _field("task", version.task or "-")
    labels = manifest.get("label_names")
    if labels:
        _field("labels", ", ".join(map(str, labels)))
    _field("created", _when(version.created_at))
    _field("registered", f"{_when(version.registered_at)} from {version.source}")
    _field("metrics", ", ".join(f"{k} {_number(v)}" for k, v in version.metrics.items()) or "-")
    lineage = manifest.get("lineage") or {}
    _field("base model", _parent(lineage.get("base_model")))
    _field("teacher", _parent(lineage.get("teacher")))
    dataset = lineage.get("dataset")
    if isinstance(dataset, Mapping):
        digest = str(dataset.get("sha256") or "-")
        others = {k: v for k, v in dataset.items() if k != "sha256"}
        rest = _compact(others) if others else ""
        _field("dataset", f"sha256 {digest[:16]}" + (f" ({rest})" if rest != "-" else ""))
    else:
        _field("dataset", _compact(dataset))
    _field("run", _compact(lineage.get("run")))
    recipe = manifest.get("recipe") or {}
    if isinstance(recipe, Mapping):
        for key in ("objective", "task"):
            if key in recipe:
                _field(key if key != "task" else "recipe task", str(recipe[key]))
        for section in ("model", "distillation", "train"):
            if isinstance(recipe.get(section), Mapping):
                _field(section, _compact(recipe[section]))
    _field("files", str(len(manifest.get("files") or {})))


@app.command()
def register(
    model_dir: Annotated[
        str, typer.Argument(help="Exported model directory (or s3://, gs:// URI)")
    ],
    name: Annotated[str, typer.Option("--name", help="Registry model name")],
    alias: Annotated[
        str | None,
        typer.Option("--alias", help="Also point this alias at the new version, e.g. candidate"),
    ] = None,
    registry: RegistryOption = DEFAULT_ROOT,
) -> None:
    """Copy an export (checksums verified) into the next version of NAME."""
    with _registry(registry) as reg:
        version = reg.register(model_dir, name)
        if alias:
            reg.promote(version.name, version.version, alias)
    console.print(
        f"registered [bold]{escape(version.ref)}[/bold] at {escape(version.uri)}", highlight=False
    )
    if alias:
        console.print(f"{escape(version.name)}@{escape(alias)} -> {version.version}")


@app.command()
def promote(
    ref: Annotated[str, typer.Argument(help="Version to promote: NAME@VERSION or NAME@ALIAS")],
    alias: AliasOption = "production",
    require: Annotated[
        list[str] | None,
        typer.Option(
            "--require",
            help="Metric gate, e.g. --require accuracy>=0.80 (repeatable; all must hold)",
        ),
    ] = None,
    registry: RegistryOption = DEFAULT_ROOT,
) -> None:
    """Point an alias at a version, if its metrics meet every --require gate."""
    with _registry(registry) as reg:
        requirements = [parse_requirement(r) for r in require or []]
        version = reg.get(ref)
        previous = reg.aliases(version.name).get(alias)
        reg.promote(version.name, version.version, alias, requirements)
    for r in requirements:
        value = _number(version.metrics[r.metric])
        console.print(f"[green]ok[/green] {escape(str(r))} ({r.metric} {value})", highlight=False)
    was = "" if previous is None else f" (was {previous})"
    console.print(
        f"[bold]{escape(version.name)}@{escape(alias)}[/bold] -> {version.version}{was}",
        highlight=False,
    )


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Model name")],
    alias: AliasOption = "production",
    registry: RegistryOption = DEFAULT_ROOT,
) -> None:
    """Point an alias back at the version it named before its latest promotion."""
    with _registry(registry) as reg:
        previous = reg.aliases(name).get(alias)
        version = reg.rollback(name, alias)
    console.print(
        f"[bold]{escape(name)}@{escape(alias)}[/bold] -> {version.version} (was {previous})",
        highlight=False,
    )
